"""``layerasync tune`` under MPI: every rank takes the same decisions, and what
it writes is what ``train --settings`` reads."""
import json
import os

from layerasync import cli
from layerasync.tune import defaults, load_settings, tune


def test_tune_decides_alike_everywhere_and_train_reads_it(comm):
    space = (('chunk_bytes', (1 << 20, 1 << 16)), ('in_flight', (None, 1, 4)))
    lines = []
    record = tune(comm, 'lenet', batch=2, iterations=2, rounds=2, log=lines.append, space=space)
    assert comm.allgather(record['settings']) == [record['settings']] * comm.size
    # 1 for the defaults, then every value but the current best's of each setting
    assert 1 + 1 + 2 <= len(record['trials']) <= 1 + 2 + 3
    assert set(record['settings']) == set(defaults())
    assert record['settings'] == defaults() or record['chosen_ms'] < record['defaults_ms']
    assert any(line.startswith('side by side') for line in lines), lines
    if comm.rank == 0:
        path = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'tuned-{os.getpid()}.json')
        with open(path, 'w') as f:
            json.dump({**record, 'settings': {**record['settings'], 'chunk_bytes': 4096}}, f)
        try:
            assert load_settings(path)['chunk_bytes'] == 4096
            args = cli.parser().parse_args(['train', '--solver', 'lenet', '--settings', path])
            assert cli._comm_settings(args)['chunk_bytes'] == 4096   # from the file
            args = cli.parser().parse_args(['train', '--solver', 'lenet', '--settings', path,
                                            '--chunk-bytes', '8192'])
            assert cli._comm_settings(args)['chunk_bytes'] == 8192   # the flag wins
        finally:
            os.remove(path)


def test_a_file_that_is_not_a_settings_file_is_named(tmp_path_factory):
    import pytest
    path = tmp_path_factory.mktemp('tune') / 'other.json'
    path.write_text(json.dumps({'settings': {'colour': 'blue'}}))
    with pytest.raises(ValueError, match=r"other.json: not a settings file written by layerasync "
                                         r"tune \(expected 'settings' with keys among scheduler"):
        load_settings(str(path))
    path.write_text('{')
    with pytest.raises(ValueError, match='other.json: not a settings file'):
        load_settings(str(path))
