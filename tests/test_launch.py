"""The launcher: hostfiles, Slurm allocations, MPI recognition, the mpirun/srun
lines for each MPI x fabric, threads, exported variables, batch scripts, bad
input; and, as root with iproute2, a 2-host emulated cluster whose shaped link
carries the gradients of a real 2-rank training run."""
import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from layerasync.launch import cluster, netns_exec
from layerasync.launch.cli import add_commands
from layerasync.launch.command import build_command, layerasync_program, place
from layerasync.launch.emulated import EMULATION_ENV, emulated_command
from layerasync.launch.hostfile import Host, parse_hostfile, read_hostfile
from layerasync.launch.mpi import THREAD_VARIABLES, detect_mpi, mpi_of
from layerasync.launch.slurm import Allocation, expand_nodelist, expand_tasks_per_node

PROGRAM = layerasync_program(['train', '--solver', 'lenet'])

# `mpirun --version` as each MPI prints it (recorded: MPICH's from the mpich wheel,
# the others as quoted in public bug reports and build logs).
VERSIONS = {
    'openmpi': ['mpirun (Open MPI) 4.1.5\n\n'
                'Report bugs to http://www.open-mpi.org/community/help/\n',
                'mpirun (Open MPI) 5.0.6\n\n'
                'Report bugs to https://www.open-mpi.org/community/help/\n'],
    'mpich': ['HYDRA build details:\n'
              '    Version:                                 5.0.2\n'
              '    Release Date:                            Fri Sep 25 20:45:26 UTC 2026\n'
              '    CC:                              cc\n'
              '    Configure options:                       --with-device=ch4:ucx,ofi '
              '--with-pm=hydra:gforker\n'
              '    Process Manager:                         pmi\n'
              '    Launchers available:                     ssh rsh fork slurm ll lsf sge manual '
              'persist\n'],
    'intelmpi': ['Intel(R) MPI Library for Linux* OS, Version 2021.12 Build 20240213 '
                 '(id: 4f55822)\nCopyright 2003-2024, Intel Corporation.\n',
                 'Intel(R) MPI Library for Linux* OS, Version 2019 Update 2 Build 20190123 '
                 '(id: e2d820d49)\nCopyright 2003-2019, Intel Corporation.\n'],
}


def fake_program(directory, name, output=''):
    """An executable ``name`` in ``directory`` that prints ``output``."""
    directory.mkdir(exist_ok=True)
    (directory / f'{name}.out').write_text(output)
    path = directory / name
    path.write_text(f'#!/bin/sh\ncat "$(dirname "$0")/{name}.out"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def mpirun(tmp_path):
    """A stand-in mpirun, so commands name a launcher without an MPI installed."""
    return fake_program(tmp_path / 'bin', 'mpirun')


@pytest.fixture
def srun(tmp_path, monkeypatch):
    path = fake_program(tmp_path / 'sbin', 'srun')
    monkeypatch.setenv('PATH', f"{tmp_path / 'sbin'}{os.pathsep}{os.environ['PATH']}")
    return path


def after(argv, option, count=1):
    """The ``count`` words after ``option`` in ``argv``."""
    i = argv.index(option)
    return argv[i + 1:i + 1 + count] if count > 1 else argv[i + 1]


def pairs(argv, option):
    """Every value of a repeated ``option VALUE``."""
    return [argv[i + 1] for i, word in enumerate(argv) if word == option]


# -- recognising the MPI --------------------------------------------------------------

@pytest.mark.parametrize('mpi,text', [(m, t) for m, texts in VERSIONS.items() for t in texts])
def test_mpi_is_recognised_from_its_version_output(mpi, text):
    assert detect_mpi(text) == mpi


def test_unknown_mpi_output_is_an_error_that_suggests_the_flag():
    with pytest.raises(ValueError,
                       match=r"says: 'lamboot 7.1'.*give --mpi openmpi\|mpich\|intelmpi"):
        detect_mpi('lamboot 7.1\n')


def test_mpi_is_recognised_by_running_mpirun_version(tmp_path):
    path = fake_program(tmp_path, 'mpirun', VERSIONS['intelmpi'][0])
    assert mpi_of(path) == 'intelmpi'


def test_unknown_mpi_name_is_refused(mpirun):
    with pytest.raises(ValueError, match="unknown MPI 'lam'; known: openmpi, mpich, intelmpi"):
        build_command(PROGRAM, np=2, mpi='lam', mpirun=mpirun, environ={})


# -- hostfiles ----------------------------------------------------------------------------

def test_hostfile_in_open_mpi_form():
    text = '# two nodes\nnode01 slots=4\n\nnode02 slots=4 max_slots=8   # spare cores\n'
    hf = parse_hostfile(text)
    assert hf.hosts == [Host('node01', 4), Host('node02', 4)]
    assert hf.dialect == 'openmpi' and hf.readable_by('openmpi') and not hf.readable_by('hydra')


def test_hostfile_in_hydra_form():
    hf = parse_hostfile('node01:4\n  node02:2\n10.0.0.7:1\n')
    assert hf.hosts == [Host('node01', 4), Host('node02', 2), Host('10.0.0.7', 1)]
    assert hf.dialect == 'hydra'


def test_bare_hostfile_is_read_by_both():
    hf = parse_hostfile('a\nb\n')
    assert hf.hosts == [Host('a'), Host('b')]
    assert hf.readable_by('openmpi') and hf.readable_by('hydra')


FORMS = "expected 'HOST', 'HOST slots=N' (Open MPI) or 'HOST:N' (MPICH/Intel MPI); got "


@pytest.mark.parametrize('line,problem', [
    ('node01 slots=four', FORMS + "'node01 slots=four'"),
    ('node01 cpus=4', FORMS + "'node01 cpus=4'"),
    ('node01 slots=4 extra', FORMS + "'node01 slots=4 extra'"),
    ('node01:4:ib0', "'node01:4:ib0' is not a host name"),
    ('node01:', "'node01:' is not a host name"),
])
def test_bad_hostfile_line_names_file_line_and_what_was_expected(tmp_path, line, problem):
    path = tmp_path / 'hosts'
    path.write_text(f'# cluster\nnode00 slots=2\n{line}\n')
    with pytest.raises(ValueError) as e:
        read_hostfile(str(path))
    assert str(e.value).startswith(f'{path}:3: ')
    assert problem in str(e.value)


@pytest.mark.parametrize('name', ['-oProxyCommand=touch', 'a;b', '$(reboot)', 'node`x`'])
def test_hostfile_refuses_names_a_launcher_or_shell_could_misread(name):
    with pytest.raises(ValueError, match=r'<hostfile>:1: .* is not a host name'):
        parse_hostfile(f'{name}:2\n')


def test_hostfile_errors_zero_slots_empty_file_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match='<hostfile>:2: b has 0 slots'):
        parse_hostfile('a:1\nb:0\n')
    with pytest.raises(ValueError, match='no hosts in it'):
        parse_hostfile('# nothing\n\n')
    with pytest.raises(ValueError, match='hostfile .*nope: No such file'):
        read_hostfile(str(tmp_path / 'nope'))


def test_hostfile_in_the_launchers_dialect_is_passed_as_is(tmp_path, mpirun):
    hosts = tmp_path / 'hosts'
    hosts.write_text('n1 slots=2\nn2 slots=2\n')
    command, _ = build_command(PROGRAM, hostfile=str(hosts), mpi='openmpi', mpirun=mpirun,
                               environ={})
    assert after(command.argv, '--hostfile') == str(hosts)
    assert after(command.argv, '-n') == '4'     # the slots, summed


def test_hostfile_in_the_other_dialect_becomes_an_inline_host_list(tmp_path, mpirun):
    hosts = tmp_path / 'hosts'
    hosts.write_text('n1 slots=2\nn2 slots=3\n')
    command, _ = build_command(PROGRAM, hostfile=str(hosts), mpi='mpich', mpirun=mpirun, environ={})
    assert after(command.argv, '-hosts') == 'n1:2,n2:3' and '-f' not in command.argv
    hosts.write_text('n1:2\nn2:2\n')
    command, _ = build_command(PROGRAM, np=4, ppn=2, hostfile=str(hosts), mpi='openmpi',
                               mpirun=mpirun, environ={})
    assert after(command.argv, '--host') == 'n1:2,n2:2'
    assert after(command.argv, '--map-by') == 'ppr:2:node'


# -- Slurm ---------------------------------------------------------------------------------

@pytest.mark.parametrize('text,nodes', [
    ('node[01-04,07]', ['node01', 'node02', 'node03', 'node04', 'node07']),
    ('a1,b[1-2]', ['a1', 'b1', 'b2']),
    ('x[08-11]', ['x08', 'x09', 'x10', 'x11']),
    ('r[1-2]n[01-02]', ['r1n01', 'r1n02', 'r2n01', 'r2n02']),
    ('gpu-[3],cpu-[9-10].ib', ['gpu-3', 'cpu-9.ib', 'cpu-10.ib']),
    ('single', ['single']),
])
def test_slurm_nodelist_expansion(text, nodes):
    assert expand_nodelist(text) == nodes


@pytest.mark.parametrize('text,problem', [('n[1-', 'unbalanced'), ('n[a-b]', 'expected N or N-M'),
                                          ('n[3-1]', 'runs backwards'), ('n1,,n2', 'empty name'),
                                          ('n[]', 'bad bracket')])
def test_bad_slurm_nodelist(text, problem):
    with pytest.raises(ValueError, match=problem):
        expand_nodelist(text)


def test_slurm_tasks_per_node():
    assert expand_tasks_per_node('2(x3),1') == [2, 2, 2, 1]
    with pytest.raises(ValueError, match='expected N or N\\(xK\\)'):
        expand_tasks_per_node('2x3')


SLURM = {'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'node[01-04,07]', 'SLURM_NNODES': '5',
         'SLURM_NTASKS': '10', 'SLURM_TASKS_PER_NODE': '2(x5)', 'SLURM_CPUS_PER_TASK': '4'}


def test_slurm_allocation_from_the_environment_old_and_new_names():
    new = Allocation.from_environ(SLURM)
    assert (new.nodes[-1], new.ntasks, new.uniform_tasks_per_node(), new.cpus_per_task) == (
        'node07', 10, 2, 4)
    old = Allocation.from_environ({'SLURM_JOBID': '1', 'SLURM_NODELIST': 'c[1-2]',
                                   'SLURM_NPROCS': '8', 'SLURM_NTASKS_PER_NODE': '4'})
    assert (old.nodes, old.ntasks, old.uniform_tasks_per_node()) == (['c1', 'c2'], 8, 4)
    assert Allocation.from_environ({'HOME': '/'}) is None
    with pytest.raises(ValueError, match=r'SLURM_NNODES=3 but SLURM_JOB_NODELIST=c\[1-2\] names 2'):
        Allocation.from_environ({'SLURM_JOB_ID': '1', 'SLURM_JOB_NODELIST': 'c[1-2]',
                                 'SLURM_NNODES': '3'})


def test_inside_slurm_srun_gets_the_allocation(srun, mpirun):
    command, job = build_command(PROGRAM, mpirun=mpirun, environ=SLURM)
    argv = command.argv
    assert argv[0] == srun
    assert argv[1:7] == ['--ntasks=10', '--nodes=5', '--ntasks-per-node=2', '--cpus-per-task=4',
                         '--cpu-bind=cores', '--export=ALL,' + ','.join(THREAD_VARIABLES)]
    assert argv[7:] == PROGRAM
    assert command.env == {name: '4' for name in THREAD_VARIABLES}
    assert (job.np, job.ppn, job.threads) == (10, 2, 4)


def test_inside_slurm_mpirun_on_request_reads_the_allocation_itself(mpirun):
    command, _ = build_command(PROGRAM, ppn=2, launcher='mpirun', mpi='openmpi', mpirun=mpirun,
                               environ=dict(SLURM, SLURM_CPUS_PER_TASK=''))
    assert command.argv == [mpirun, '-n', '10', '--map-by', 'ppr:2:node'] + PROGRAM


def test_inside_slurm_too_many_ranks_for_the_nodes(srun, mpirun):
    with pytest.raises(ValueError, match='--np 24 at --ppn 4 needs 6 nodes, but the Slurm '
                                         'allocation has 5'):
        build_command(PROGRAM, np=24, ppn=4, mpirun=mpirun, environ=SLURM)


def test_srun_carries_fabric_settings_in_its_environment(srun, mpirun):
    command, _ = build_command(PROGRAM, np=4, ppn=2, mpi='openmpi', fabric='ib', mpirun=mpirun,
                               launcher='srun', environ={})
    # srun splits --export at commas, and UCX_TLS has commas: the value rides in srun's environment.
    assert '--export=ALL,OMPI_MCA_pml,UCX_TLS' in command.argv
    assert command.env == {'OMPI_MCA_pml': 'ucx', 'UCX_TLS': 'rc,sm,self'}
    assert command.display().startswith('env OMPI_MCA_pml=ucx UCX_TLS=rc,sm,self ')


# -- fabrics, threads, exported variables ------------------------------------------------------

FABRIC_SETTINGS = {
    ('openmpi', 'ib'): {'UCX_TLS': 'rc,sm,self', 'UCX_NET_DEVICES': 'DEV'},
    ('openmpi', 'tcp'): {'UCX_TLS': 'tcp,sm,self', 'UCX_NET_DEVICES': 'DEV'},
    ('openmpi', 'shm'): {'UCX_TLS': 'sm,self'},
    ('mpich', 'ib'): {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'verbs',
                      'FI_VERBS_IFACE': 'DEV'},
    ('mpich', 'tcp'): {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'tcp', 'FI_TCP_IFACE': 'DEV'},
    ('mpich', 'shm'): {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'shm'},
    ('intelmpi', 'ib'): {'I_MPI_FABRICS': 'shm:ofi', 'I_MPI_OFI_PROVIDER': 'mlx',
                         'UCX_NET_DEVICES': 'DEV'},
    ('intelmpi', 'tcp'): {'I_MPI_FABRICS': 'shm:ofi', 'I_MPI_OFI_PROVIDER': 'tcp',
                          'FI_TCP_IFACE': 'DEV'},
    ('intelmpi', 'shm'): {'I_MPI_FABRICS': 'shm'},
}


def passed_env(argv, mpi):
    """The variables an mpirun line hands to the ranks, as a dict."""
    if mpi == 'openmpi':
        return dict(item.split('=', 1) for item in pairs(argv, '-x'))
    return {argv[i + 1]: argv[i + 2] for i, word in enumerate(argv) if word == '-genv'}


@pytest.mark.parametrize('mpi,fabric', list(FABRIC_SETTINGS))
def test_each_mpi_and_fabric(mpi, fabric, mpirun):
    np, ppn = (2, 2) if fabric == 'shm' else (8, 4)
    device = None if fabric == 'shm' else 'DEV'
    command, _ = build_command(PROGRAM, np=np, ppn=ppn, mpi=mpi, fabric=fabric, net_device=device,
                               mpirun=mpirun, environ={})
    argv = command.argv
    assert argv[0] == mpirun and argv[-len(PROGRAM):] == PROGRAM
    assert passed_env(argv, mpi) == FABRIC_SETTINGS[mpi, fabric]
    if mpi == 'openmpi':
        assert after(argv, '--mca', 2) == ['pml', 'ucx']
        assert after(argv, '--map-by') == f'ppr:{ppn}:node'
    else:
        assert after(argv, '-ppn') == str(ppn) and '--mca' not in argv
    assert command.env == {}


def test_fabric_errors(mpirun):
    with pytest.raises(ValueError, match='--fabric shm is shared memory within one node'):
        build_command(PROGRAM, np=8, ppn=4, mpi='mpich', fabric='shm', mpirun=mpirun, environ={})
    with pytest.raises(ValueError, match='--net-device eth0: fabric shm uses no network device'):
        build_command(PROGRAM, np=2, mpi='mpich', fabric='shm', net_device='eth0', mpirun=mpirun,
                      environ={})
    with pytest.raises(ValueError, match='--net-device needs --fabric'):
        build_command(PROGRAM, np=2, mpi='mpich', net_device='eth0', mpirun=mpirun, environ={})


def test_fabric_settings_follow_the_recognised_mpi(tmp_path):
    path = fake_program(tmp_path, 'mpirun', VERSIONS['openmpi'][1])
    command, _ = build_command(PROGRAM, np=2, fabric='tcp', mpirun=path, environ={})
    assert passed_env(command.argv, 'openmpi') == {'UCX_TLS': 'tcp,sm,self'}


def test_threads_bind_each_rank_to_its_cores(mpirun, srun):
    threads = {name: '4' for name in THREAD_VARIABLES}

    def argv(mpi, **kw):
        return build_command(PROGRAM, np=8, threads=4, mpi=mpi, mpirun=mpirun, environ={}, **kw)[0]

    a = argv('openmpi', ppn=2).argv
    assert after(a, '--map-by', 3) == ['ppr:2:node:PE=4', '--bind-to', 'core']
    assert passed_env(a, 'openmpi') == threads
    assert after(argv('openmpi').argv, '--map-by', 3) == ['slot:PE=4', '--bind-to', 'core']
    a = argv('mpich', ppn=2).argv
    assert after(a, '-bind-to') == 'core:4' and passed_env(a, 'mpich') == threads
    a = argv('intelmpi', ppn=2).argv
    assert '-bind-to' not in a
    assert passed_env(a, 'intelmpi') == dict(threads, I_MPI_PIN_CELL='core',
                                             I_MPI_PIN_DOMAIN='4:compact')
    c = argv('mpich', ppn=2, launcher='srun')
    assert '--cpus-per-task=4' in c.argv and '--cpu-bind=cores' in c.argv and c.env == threads


def test_exported_variables_reach_every_rank(mpirun, srun):
    environ = {'DATA': '/scratch/data'}
    export = ['DATA', 'RUN=a b;$(x)']

    def argv(mpi, **kw):
        return build_command(PROGRAM, np=2, mpi=mpi, export=export, mpirun=mpirun,
                             environ=environ, **kw)[0]

    assert pairs(argv('openmpi').argv, '-x') == ['DATA', 'RUN=a b;$(x)']
    a = argv('mpich').argv
    assert after(a, '-genvlist') == 'DATA' and after(a, '-genv', 2) == ['RUN', 'a b;$(x)']
    assert after(argv('intelmpi').argv, '-genv', 2) == ['RUN', 'a b;$(x)']
    c = argv('openmpi', launcher='srun')
    assert '--export=ALL,DATA,RUN' in c.argv and c.env == {'RUN': 'a b;$(x)'}
    # The printed line is the exact command: a shell splits it back into the same words.
    assert shlex.split(c.display()) == ['env', 'RUN=a b;$(x)'] + c.argv
    with pytest.raises(ValueError, match='--export SCRATCH: SCRATCH is not set here'):
        build_command(PROGRAM, np=2, mpi='mpich', export=['SCRATCH'], mpirun=mpirun, environ={})
    with pytest.raises(ValueError, match="--export '1X=2': expected NAME or NAME=VALUE"):
        build_command(PROGRAM, np=2, mpi='mpich', export=['1X=2'], mpirun=mpirun, environ={})


def test_placement_rules():
    hosts = [Host('a', 2), Host('b', 2)]
    assert place(np=4) == (4, None)
    assert place(ppn=2, hosts=hosts) == (4, 2)
    assert place(hosts=hosts) == (4, None)
    with pytest.raises(ValueError, match='--np 6 is not a multiple of --ppn 4'):
        place(np=6, ppn=4)
    with pytest.raises(ValueError, match='needs 3 nodes, but the hostfile has 2'):
        place(np=6, ppn=2, hosts=hosts)
    with pytest.raises(ValueError, match='--ppn without --np needs hosts'):
        place(ppn=2)
    with pytest.raises(ValueError, match='how many ranks'):
        place(hosts=[Host('a'), Host('b')])


# -- the command line -----------------------------------------------------------------------

def run_cli(*words):
    top = argparse.ArgumentParser(prog='layerasync')
    add_commands(top.add_subparsers(dest='command', required=True))
    args = top.parse_args(list(words))
    return args.run(args)


def test_dry_run_prints_the_exact_command(capsys, mpirun):
    run_cli('launch', '--np', '4', '--ppn', '2', '--mpi', 'mpich', '--mpirun', mpirun, '--dry-run',
            '--', 'train', '--solver', 'lenet', '--set', 'base_lr=0.1')
    words = shlex.split(capsys.readouterr().out)
    assert words == [mpirun, '-n', '4', '-ppn', '2', sys.executable, '-m', 'layerasync', 'train',
                     '--solver', 'lenet', '--set', 'base_lr=0.1']


def test_sbatch_writes_a_batch_script(tmp_path, capsys, srun, mpirun, monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '7')     # writing from inside another job changes nothing
    script = tmp_path / 'job.sh'
    run_cli('launch', '--np', '8', '--ppn', '4', '--threads', '2', '--sbatch', str(script),
            '--time', '1:00:00', '--partition', 'cpu', '--', 'train', '--solver', 'lenet')
    assert f'sbatch {script}' in capsys.readouterr().out
    lines = script.read_text().splitlines()
    assert lines[0] == '#!/bin/bash'
    assert [line for line in lines if line.startswith('#SBATCH')] == [
        '#SBATCH --job-name=layerasync', '#SBATCH --nodes=2', '#SBATCH --ntasks=8',
        '#SBATCH --ntasks-per-node=4', '#SBATCH --cpus-per-task=2', '#SBATCH --time=1:00:00',
        '#SBATCH --partition=cpu']
    assert [f'export {name}=2' for name in THREAD_VARIABLES] == [
        line for line in lines if line.startswith('export')]
    assert shlex.split(lines[-1]) == [srun, '--ntasks=8', '--nodes=2', '--ntasks-per-node=4',
                                      '--cpus-per-task=2', '--cpu-bind=cores',
                                      '--export=ALL,' + ','.join(THREAD_VARIABLES)] + PROGRAM
    result = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_errors(tmp_path, srun, mpirun):
    with pytest.raises(ValueError, match='--sbatch needs --np'):
        run_cli('launch', '--sbatch', str(tmp_path / 'x'), '--', 'train')
    with pytest.raises(ValueError, match="--partition 'cpu;reboot': use letters"):
        run_cli('launch', '--np', '2', '--sbatch', str(tmp_path / 'x'), '--partition', 'cpu;reboot',
                '--', 'train')


def test_cli_input_errors(mpirun):
    with pytest.raises(ValueError, match='nothing to launch: end the options with --'):
        run_cli('launch', '--np', '2', '--mpirun', mpirun, '--mpi', 'mpich')
    with pytest.raises(ValueError, match='--emulated sets the hosts, the fabric and the MPI '
                                         'itself; drop --fabric, --mpi'):
        run_cli('launch', '--emulated', '--fabric', 'ib', '--mpi', 'openmpi', '--', 'train')
    with pytest.raises(SystemExit):     # argparse: not a choice
        run_cli('launch', '--mpi', 'lam', '--', 'train')
    with pytest.raises(SystemExit):     # argparse: no --bandwidth
        run_cli('cluster', 'up', '--hosts', '2')


@pytest.mark.parametrize('rate, message', [
    ('fast', "--bandwidth 'fast': expected a number and a unit"),
    ('1gbps', "--bandwidth '1gbps' is ambiguous: tc reads gbps as bytes per second"),
    ('10bit', "--bandwidth '10bit': must be at least 1kbit"),
])
def test_cluster_up_checks_the_rate_before_anything_else(rate, message, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, 'which', lambda name: pytest.fail('looked for the tools'))
    with pytest.raises(ValueError, match=message):
        run_cli('cluster', 'up', '--hosts', '2', '--bandwidth', rate)


# -- the emulated cluster -----------------------------------------------------------------------

def test_cluster_without_root_or_iproute2_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    monkeypatch.setattr(shutil, 'which', lambda name: f'/sbin/{name}')
    with pytest.raises(RuntimeError, match='creates network namespaces, which needs root'):
        cluster.up(2, '1gbit', state_file=str(tmp_path / 'state.json'))
    monkeypatch.setattr(shutil, 'which', lambda name: None if name == 'tc' else f'/sbin/{name}')
    with pytest.raises(RuntimeError, match="needs iproute2's tc, not found on PATH"):
        cluster.up(2, '1gbit', state_file=str(tmp_path / 'state.json'))
    assert not (tmp_path / 'state.json').exists()


def test_launching_without_a_cluster_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match='no emulated cluster is up: run `layerasync cluster up'):
        emulated_command(PROGRAM, state_file=str(tmp_path / 'none.json'))


def test_emulated_command_runs_hydra_in_host_0_with_the_namespace_launcher(tmp_path):
    state_file = tmp_path / 'cluster.json'
    state_file.write_text(json.dumps({
        'hosts': [{'netns': 'la-host0', 'address': '10.77.0.1'},
                  {'netns': 'la-host1', 'address': '10.77.0.2'}],
        'hostfile': '/run/x/hosts', 'wrapper': '/run/x/netns-ssh'}))
    mpiexec = fake_program(tmp_path / 'bin', 'mpiexec', VERSIONS['mpich'][0])

    def emulated(**kw):
        return emulated_command(PROGRAM, state_file=str(state_file), mpiexec=mpiexec,
                                        environ={}, **kw)
    command, job = emulated(np=4, threads=2, export=['A=1'])
    argv = command.argv
    assert argv[1:4] == ['netns', 'exec', 'la-host0'] and argv[4] == mpiexec
    assert argv[5:11] == ['-launcher', 'ssh', '-launcher-exec', '/run/x/netns-ssh',
                          '-localhost', '10.77.0.1']
    assert after(argv, '-f') == '/run/x/hosts' and after(argv, '-ppn') == '2'
    # Ranks of different emulated hosts share the machine's cores: no binding.
    assert '-bind-to' not in argv
    # The ranks learn how many share the machine (their waits spin less when oversubscribed).
    assert passed_env(argv, 'mpich') == dict(EMULATION_ENV, A='1', LAYERASYNC_RANKS_PER_MACHINE='4',
                                             **{name: '2' for name in THREAD_VARIABLES})
    assert (job.np, job.ppn) == (4, 2) and argv[-len(PROGRAM):] == PROGRAM
    assert after(emulated()[0].argv, '-n') == '2'     # one rank per host
    # No threads chosen: the ranks share the one machine's cores.
    share = str(max(1, (os.cpu_count() or 1) // 4))
    assert passed_env(emulated(np=4)[0].argv, 'mpich') == dict(
        EMULATION_ENV, LAYERASYNC_RANKS_PER_MACHINE='4', **{name: share for name in THREAD_VARIABLES})
    chosen = emulated_command(PROGRAM, np=4, state_file=str(state_file), mpiexec=mpiexec,
                              environ={'OMP_NUM_THREADS': '1'})[0].argv
    assert passed_env(chosen, 'mpich') == dict(EMULATION_ENV, LAYERASYNC_RANKS_PER_MACHINE='4')
    with pytest.raises(ValueError, match='--np 3 does not spread evenly over the 2 emulated hosts'):
        emulated(np=3)
    with pytest.raises(ValueError, match='needs 3 nodes, but the emulated cluster has 2'):
        emulated(np=6, ppn=2)
    openmpi = fake_program(tmp_path / 'other', 'mpiexec', VERSIONS['openmpi'][0])
    with pytest.raises(ValueError, match='the emulated cluster needs MPICH'):
        emulated_command(PROGRAM, state_file=str(state_file), mpiexec=openmpi)


def test_hydras_ssh_arguments_are_understood():
    # As Hydra passes them (see its bootstrap/external launch code): the proxy's path quoted.
    proxy = ['"/opt/mpi/bin/hydra_pmi_proxy"', '--control-port', '10.77.0.1:40000',
             '--proxy-id', '1']
    expected = [proxy[0].strip('"')] + proxy[1:]
    for options in ([], ['-x'], ['-X'], ['-xq'], ['-o', 'StrictHostKeyChecking=no', '-p', '22'],
                    ['-p22', '-l', 'me'], ['--']):
        assert netns_exec.split_ssh_arguments(options + ['10.77.0.2'] + proxy) == (
            '10.77.0.2', expected)
    assert netns_exec.split_ssh_arguments(['me@10.77.0.2', 'a b']) == ('10.77.0.2', ['a', 'b'])
    with pytest.raises(ValueError, match='no host'):
        netns_exec.split_ssh_arguments(['-x'])
    with pytest.raises(ValueError, match='interactive login'):
        netns_exec.split_ssh_arguments(['-x', '10.77.0.2'])


def test_netns_exec_refuses_hosts_outside_the_cluster(tmp_path, capsys):
    state = tmp_path / 'state.json'
    state.write_text(json.dumps({'hosts': [{'address': '10.77.0.1', 'netns': 'la-host0'}]}))
    assert netns_exec.main(['--state', str(state), '-x', '192.0.2.1', 'true']) == 255
    assert '192.0.2.1 is not a host of the emulated cluster (its hosts: 10.77.0.1)' in (
        capsys.readouterr().err)


def _emulation_missing():
    if os.geteuid() != 0:
        return 'needs root (network namespaces)'
    if not (shutil.which('ip') and shutil.which('tc')):
        return "needs iproute2's ip and tc"
    from layerasync.launch.mpi import find_program
    path = find_program(['mpiexec', 'mpirun'])
    if path is None or mpi_of(path) != 'mpich':
        return "needs MPICH's mpiexec next to this Python or on PATH"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'needs mpi4py'
    return None


PREFIX, SUBNET = 'lat', '10.77.9.0/24'


def our_objects():
    netns = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    links = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True, text=True).stdout
    return ([line.split()[0] for line in netns.splitlines() if line.startswith(f'{PREFIX}-')] +
            [w.rstrip(':').split('@')[0] for line in links.splitlines()
             for w in line.split()[1:2] if w.startswith(f'{PREFIX}-')])


@pytest.fixture
def emulated(tmp_path):
    """A 2-host cluster at 1 Gbit, always taken down again."""
    missing = _emulation_missing()
    if missing:
        pytest.skip(f'the emulated cluster {missing}')
    if our_objects():
        pytest.skip(f'namespaces or links named {PREFIX}-* exist already: {our_objects()}')
    state_file = str(tmp_path / 'run' / 'cluster.json')
    try:
        yield cluster.up(2, '1gbit', latency_free=True, subnet=SUBNET, prefix=PREFIX,
                         state_file=state_file)
    finally:
        if cluster.load(state_file) is not None:
            cluster.down(state_file)


def test_two_rank_training_sends_its_gradients_over_the_shaped_link(emulated, tmp_path):
    state_file = emulated['state_file']
    assert [m['address'] for m in emulated['hosts']] == ['10.77.9.1', '10.77.9.2']
    with pytest.raises(RuntimeError, match='already up'):
        cluster.up(2, '1gbit', subnet=SUBNET, prefix=PREFIX, state_file=state_file)
    program = layerasync_program(['train', '--solver', 'lenet', '--synthetic',
                                  '--set', 'max_iter=5', '--set', 'test_interval=1000',
                                  '--strategy', 'layerwise', '--no-progress'])
    command, _ = emulated_command(program, np=2, state_file=state_file)
    assert command.argv[:4] == [shutil.which('ip'), 'netns', 'exec', f'{PREFIX}-host0']
    before = cluster.link_counters(emulated)
    process = subprocess.Popen(command.argv, env=dict(os.environ, OMP_NUM_THREADS='1'),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)   # mpiexec ends its ranks on SIGINT
        output, _ = process.communicate(timeout=30)
        pytest.fail(f'the 2-rank run took over 120 s:\n{output}')
    assert process.returncode == 0, output
    assert '2 ranks, 431,080 parameters' in output
    after_ = cluster.link_counters(emulated)
    gradient_bytes = 5 * 431_080 * 4    # one float32 allreduce of every parameter per iteration
    for b, a in zip(before, after_):
        # In a 2-rank allreduce each rank sends its whole gradient once.
        assert a['tx_bytes'] - b['tx_bytes'] >= gradient_bytes, (b, a)
        assert a['rx_bytes'] - b['rx_bytes'] >= gradient_bytes, (b, a)
    assert f"{a['tx_bytes']:,}" in cluster.format_status(emulated, after_)


def test_cluster_down_removes_exactly_what_up_made(emulated):
    assert sorted(our_objects()) == sorted([f'{PREFIX}-host0', f'{PREFIX}-host1',
                                            f'{PREFIX}-br', f'{PREFIX}-host0', f'{PREFIX}-host1'])
    removed = cluster.down(emulated['state_file'])
    assert our_objects() == []
    assert f'namespace {PREFIX}-host1' in removed and f'link {PREFIX}-br' in removed
    assert not os.path.exists(os.path.dirname(emulated['state_file']))


def test_a_failed_cluster_up_leaves_nothing_behind(tmp_path, monkeypatch):
    missing = _emulation_missing()
    if missing:
        pytest.skip(f'the emulated cluster {missing}')
    if our_objects():
        pytest.skip(f'namespaces or links named {PREFIX}-* exist already: {our_objects()}')

    def fail(state):
        raise OSError('disk full')
    monkeypatch.setattr(cluster, '_write_files', fail)
    state_file = str(tmp_path / 'run' / 'cluster.json')
    with pytest.raises(OSError, match='disk full'):
        cluster.up(2, '1gbit', subnet=SUBNET, prefix=PREFIX, state_file=state_file)
    assert our_objects() == [] and not os.path.exists(state_file)


def test_tc_shapes_to_the_rate_as_read_in_bits(tmp_path):
    """125MBps is a byte rate: tc must be given (and report) 1 Gbit/s, not 125 Mbit/s."""
    missing = _emulation_missing()
    if missing:
        pytest.skip(f'the emulated cluster {missing}')
    if our_objects():
        pytest.skip(f'namespaces or links named {PREFIX}-* exist already: {our_objects()}')
    state_file = str(tmp_path / 'run' / 'cluster.json')
    try:
        state = cluster.up(1, '125MBps', subnet=SUBNET, prefix=PREFIX, state_file=state_file)
        qdisc = json.loads(subprocess.run(
            ['tc', '-n', f'{PREFIX}-host0', '-j', 'qdisc', 'show', 'dev', 'eth0'],
            capture_output=True, text=True, check=True).stdout)
        tbf = next(q for q in qdisc if q['kind'] == 'tbf')
        assert tbf['options']['rate'] == 125_000_000     # tc's JSON: bytes per second
        assert state['bits_per_second'] == 1e9
        assert '1 Gbit/s = 125 MB/s egress per host' in cluster.format_status(state, [])
    finally:
        if cluster.load(state_file) is not None:
            cluster.down(state_file)
