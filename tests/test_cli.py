"""The ``layerasync`` command end to end, in fresh processes: training with
metrics, resume that is bit-exact, divergence reports, timing profiles, errors,
and a failing rank that ends the whole MPI job instead of hanging it."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from layerasync import models

BIN = os.path.dirname(sys.executable)
LAYERASYNC = [sys.executable, '-m', 'layerasync']
ENV = dict(os.environ, OMP_NUM_THREADS='1')

# The digits net with dropout, so that resuming must reproduce the dropout masks too.
NET = open(models.path('digits')).read().replace(
    'layer {\n  name: "ip2"',
    'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
    'dropout_param { dropout_ratio: 0.3 } }\nlayer {\n  name: "ip2"')


def run(*args, cwd, timeout=120, check=True):
    result = subprocess.run(LAYERASYNC + list(args), cwd=cwd, env=ENV, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'exit {result.returncode}\n{result.stdout}\n{result.stderr}')
    return result


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / 'net.prototxt').write_text(NET)
    (tmp_path / 'solver.prototxt').write_text(
        'net: "net.prototxt"\ntest_iter: 3\ntest_interval: 10\nbase_lr: 0.05\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nlr_policy: "step"\ngamma: 0.5\nstepsize: 7\ndisplay: 5\n'
        'max_iter: 20\nsnapshot_prefix: "snap/run"\nrandom_seed: 3\n')
    return tmp_path


def weights(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_train_writes_log_metrics_and_a_final_snapshot(workdir):
    out = run('train', '--solver', 'solver.prototxt', '--metrics', 'm.jsonl', cwd=workdir)
    assert 'Iteration 10, Testing net (#0)' in out.stdout
    assert 'Test net output #0: accuracy' in out.stdout
    assert 'Optimization Done.' in out.stdout
    records = [json.loads(line) for line in open(workdir / 'm.jsonl')]
    tests = [r for r in records if 'test/accuracy' in r]
    assert [r['iter'] for r in tests] == [0, 10, 20]
    assert all({'iter', 'time', 'rank'} <= set(r) for r in records)
    assert any('loss' in r and 'lr' in r for r in records)
    assert (workdir / 'snap' / 'run_iter_20.weights.npz').exists()


def test_resume_in_a_fresh_process_is_bit_exact(workdir):
    run('train', '--solver', 'solver.prototxt', cwd=workdir)
    straight = weights(workdir / 'snap' / 'run_iter_20.weights.npz')
    shutil.rmtree(workdir / 'snap')
    run('train', '--solver', 'solver.prototxt', '--set', 'max_iter=8', cwd=workdir)
    run('train', '--solver', 'solver.prototxt', '--snapshot', 'snap/run_iter_8.solverstate.npz',
        cwd=workdir)
    resumed = weights(workdir / 'snap' / 'run_iter_20.weights.npz')
    assert straight.keys() == resumed.keys()
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], key)


def test_diverging_loss_names_iteration_and_layer(workdir):
    out = run('train', '--solver', 'solver.prototxt', '--set', 'base_lr=1e30',
              '--set', 'snapshot=1', cwd=workdir, check=False)
    assert out.returncode == 1
    assert ("rank 0, iteration 1: the loss is nan (not finite); first non-finite value in the "
            "output 'ip1' of layer 'ip1' (InnerProduct)") in out.stderr
    # The snapshot at iteration 1 holds the weights whose loss overflowed: not a good one.
    assert 'no snapshot written before this iteration is readable and finite' in out.stderr


def test_after_a_divergence_the_last_good_snapshot_resumes(workdir):
    run('train', '--solver', 'solver.prototxt', '--set', 'max_iter=3', cwd=workdir)
    out = run('train', '--solver', 'solver.prototxt', '--snapshot', 'snap/run_iter_3.solverstate.npz',
              '--set', 'base_lr=1e30', '--set', 'snapshot=1', cwd=workdir, check=False)
    assert out.returncode == 1
    assert 'iteration 4: the loss is nan' in out.stderr
    assert 'the last good snapshot is snap/run_iter_3.solverstate.npz' in out.stderr
    resumed = run('train', '--solver', 'solver.prototxt', '--snapshot',
                  'snap/run_iter_3.solverstate.npz', '--set', 'max_iter=5', cwd=workdir)
    assert 'Optimization Done.' in resumed.stdout


def test_fine_tuning_logs_what_it_copied(workdir):
    run('train', '--solver', 'solver.prototxt', '--set', 'max_iter=2', cwd=workdir)
    out = run('train', '--solver', 'solver.prototxt', '--weights', 'snap/run_iter_2.weights.npz',
              '--set', 'max_iter=1', cwd=workdir)
    assert 'Fine-tuning from snap/run_iter_2.weights.npz: copied' in out.stdout


@pytest.mark.parametrize('kind', ['weights as --snapshot', 'state as --weights', 'truncated',
                                  'empty'])
def test_bad_snapshot_files_get_one_line_errors(workdir, kind):
    run('train', '--solver', 'solver.prototxt', '--set', 'max_iter=2', cwd=workdir)
    state, weights = 'snap/run_iter_2.solverstate.npz', 'snap/run_iter_2.weights.npz'
    if kind == 'truncated':
        data = (workdir / state).read_bytes()
        (workdir / 'cut.solverstate.npz').write_bytes(data[:len(data) // 2])
        args = ['--snapshot', 'cut.solverstate.npz']
    elif kind == 'empty':
        (workdir / 'empty.solverstate.npz').write_bytes(b'')
        args = ['--snapshot', 'empty.solverstate.npz']
    else:
        args = ['--snapshot', weights] if kind == 'weights as --snapshot' else ['--weights', state]
    out = run('train', '--solver', 'solver.prototxt', *args, cwd=workdir, check=False)
    assert out.returncode == 1
    assert 'Traceback' not in out.stderr
    assert out.stderr.startswith('layerasync train: error: ') and '.npz' in out.stderr, out.stderr


def test_time_prints_a_table_and_writes_the_profile(tmp_path):
    out = run('time', '--model', 'lenet', '--synthetic', '--iterations', '2', '--batch', '8',
              '--json', 'p.json', cwd=tmp_path)
    assert 'conv1' in out.stdout and 'Average forward-backward' in out.stdout
    profile = json.load(open(tmp_path / 'p.json'))
    assert profile['batch'] == 8 and profile['param_bytes'] == 431080 * 4
    conv1 = next(layer for layer in profile['layers'] if layer['name'] == 'conv1')
    assert conv1['param_bytes'] == (20 * 25 + 20) * 4 and conv1['forward_ms'] > 0
    assert profile['warmup_s'] > 0


def test_replayed_training_measures_its_profile_and_does_not_test(tmp_path):
    out = run('train', '--solver', 'digits', '--set', 'max_iter=4', '--compute', 'replay',
              '--compute-speedup', '2', '--no-progress', cwd=tmp_path)
    said = out.stdout + out.stderr
    assert 'Compute replayed from the measured profile at 2x speed' in said
    assert 'No tests: the test nets are not replayed' in said
    assert 'Testing net' not in said and 'Trained 4 iterations' in said


def test_source_replaces_the_data_of_every_data_layer(tmp_path):
    out = run('test', '--model', 'lenet', '--source', 'mnist-subset', '--iterations', '1',
              cwd=tmp_path)
    assert 'accuracy = ' in out.stdout


def test_text_demo_reports_against_a_bigram_model_and_samples(tmp_path):
    out = run('demo', '--text', '--iterations', '3', '--quiet', cwd=tmp_path)
    report = out.stdout.split('gpt-mini on the embedded text: validation loss ')[1]
    loss, bigram = float(report.split()[0]), float(report.split('bigram model: ')[1].split(')')[0])
    assert 3.0 < loss < 5.0 and 2.0 < bigram < 3.0, (loss, bigram)   # log(128) = 4.85 at init
    weights = 'snapshots/gpt-mini_iter_3.weights.npz'
    assert (tmp_path / weights).exists() and f'--weights {weights}' in out.stdout
    sample = run('sample', '--model', 'gpt-mini', '--weights', weights, '--prompt', 'The ',
                 '--length', '40', '--seed', '5', cwd=tmp_path)
    assert sample.stdout.startswith('The ') and len(sample.stdout.rstrip('\n')) >= 44
    again = run('sample', '--model', 'gpt-mini', '--weights', weights, '--prompt', 'The ',
                '--length', '40', '--seed', '5', cwd=tmp_path)
    assert again.stdout == sample.stdout
    bad = run('sample', '--model', 'gpt-mini', '--prompt', 'Caf\u4e2d', cwd=tmp_path,
              check=False)
    assert bad.returncode == 1 and ("error: the prompt: character '中' at position 3 is not in "
                                    'the vocabulary') in bad.stderr


def test_test_command_scores_saved_weights(workdir):
    run('train', '--solver', 'solver.prototxt', cwd=workdir)
    out = run('test', '--model', 'net.prototxt', '--weights', 'snap/run_iter_20.weights.npz',
              '--iterations', '3', cwd=workdir)
    assert float(out.stdout.split('accuracy = ')[1].split()[0]) > 0.5


@pytest.mark.parametrize('args, message', [
    (['train', '--solver', 'nosuch'], "nosuch: no such file, and no zoo model 'nosuch'"),
    (['train', '--solver', 'digits', '--set', 'max_iters=3'], "--set 'max_iters=3': expected FIELD=VALUE"),
    (['train', '--solver', 'digits', '--strategy', 'fastest'], "unknown strategy 'fastest'"),
    (['train', '--solver', 'digits', '--strategy', 'delayed:0'], 'delayed:K needs a delay K >= 1'),
    (['train', '--solver', 'digits', '--set', 'lr_policy=cosinus'], "unknown lr_policy 'cosinus'"),
    (['test', '--model', 'lenet', '--source', 'bogus'],
     "layer 'mnist' (Data): unknown data source 'bogus'; known sources: digits"),
    (['test', '--model', 'lenet', '--source', 'bogus'], "given by --source, in place of "
                                                        "'mnist:data/mnist'"),
    (['sample', '--model', 'lenet', '--source', 'mnist-subset'],
     'sampling needs a net whose first layer is a Data layer on a text source'),
    (['demo', '--iterations', '5'], '--iterations is for --text'),
    (['train', '--solver', 'digits', '--compute-speedup', '2'],
     '--compute-speedup scales replayed compute: give --compute replay'),
    (['train', '--solver', 'digits', '--compute', 'replay:nope.json'],
     'nope.json: cannot read the profile'),
    (['train', '--solver', 'digits', '--compute', 'fake'], "'fake': give real, or replay"),
])
def test_bad_input_is_reported(tmp_path, args, message):
    out = run(*args, cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert message in out.stderr


@pytest.mark.skipif(shutil.which('mpiexec', path=BIN) is None, reason='mpiexec not installed')
def test_a_failing_rank_ends_the_whole_job(tmp_path):
    """Rank 1 cannot find its data; rank 0 would wait for it forever at start-up."""
    mpiexec = shutil.which('mpiexec', path=BIN)
    common = ['train', '--solver', 'lenet', '--set', 'max_iter=5', '--no-progress']
    command = [mpiexec, '-n', '1', *LAYERASYNC, *common, '--synthetic', ':',
               '-n', '1', *LAYERASYNC, *common, '--data-root', str(tmp_path / 'nowhere')]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=90)
    elapsed = time.perf_counter() - start
    assert out.returncode != 0
    assert 'rank 1: error:' in out.stderr and 'nowhere' in out.stderr
    assert elapsed < 60


@pytest.mark.skipif(shutil.which('mpiexec', path=BIN) is None, reason='mpiexec not installed')
def test_ranks_with_different_solver_settings_stop_at_start(tmp_path):
    """Rank 1 was given another momentum: both ranks stop before the first iteration,
    the difference shown once, and every rank exits normally with status 1."""
    mpiexec = shutil.which('mpiexec', path=BIN)
    common = ['train', '--solver', 'lenet', '--set', 'max_iter=5', '--no-progress', '--synthetic',
              '--strategy', 'layerwise']
    command = [mpiexec, '-n', '1', *LAYERASYNC, *common, ':',
               '-n', '1', *LAYERASYNC, *common, '--set', 'momentum=0.5']
    out = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=90)
    assert out.returncode != 0
    assert out.stderr.count('rank 1 differs from rank 0: rank 0 has solver.momentum = 0.9, '
                            'rank 1 has solver.momentum = 0.5') == 1, out.stderr
    assert 'Iteration 0' not in out.stdout


@pytest.mark.parametrize('args, message', [
    (['time', '--model', 'lenet', '--iterations', '0'], 'argument --iterations: 0 is below'),
    (['train', '--solver', 'digits', '--chunk-bytes', '-1'], 'argument --chunk-bytes: -1 is below'),
    (['train', '--solver', 'digits', '--fusion-bytes', '-5'], 'argument --fusion-bytes: -5'),
    (['train', '--solver', 'digits', '--in-flight', '0'], 'argument --in-flight: 0 is below'),
    (['train', '--solver', 'digits', '--strategy', 'delayed:100000'],
     "strategy 'delayed': 100000 more gradient sets"),
])
def test_out_of_range_arguments_are_refused_before_any_work(tmp_path, args, message):
    out = run(*args, cwd=tmp_path, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert 'Traceback' not in out.stderr


def test_timing_a_net_without_layers_says_so(tmp_path):
    (tmp_path / 'empty.prototxt').write_text('name: "empty"\n')
    out = run('time', '--model', 'empty.prototxt', cwd=tmp_path, check=False)
    assert out.returncode == 1 and "net 'empty' has no layers in phase TRAIN" in out.stderr
    assert 'Traceback' not in out.stderr


def test_remove_layers_and_trace_link_check_their_input(workdir):
    out = run('train', '--solver', 'solver.prototxt', '--remove-layers', 'LRN', cwd=workdir,
              check=False)
    assert out.returncode == 1 and 'no layer of type LRN to remove' in out.stderr, out.stderr
    out = run('train', '--solver', 'solver.prototxt', '--trace-link', 'lo', cwd=workdir,
              check=False)
    assert out.returncode != 0 and 'give --trace FILE too' in out.stderr, out.stderr
    out = run('train', '--solver', 'solver.prototxt', '--set', 'max_iter=2', '--remove-layers',
              'Dropout', '--trace', 't.json', '--trace-link', 'lo', cwd=workdir)
    assert 'Timeline written to t.json' in out.stdout + out.stderr
    assert 'Traceback' not in out.stderr
