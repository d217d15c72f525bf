"""One process needs no MPI: the command works, or fails with its own clear
error, where ``import mpi4py`` fails; and only the MPI boundary imports mpi4py.

The subprocesses find a package ``mpi4py`` first on their path whose import
raises ``ModuleNotFoundError``, as on a machine without mpi4py. The static
check walks the package's module-level imports.
"""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

import layerasync

PACKAGE = pathlib.Path(layerasync.__file__).parent
LAUNCHER_VARIABLES = ('PMI_', 'OMPI_', 'PMIX_', 'MPI_LOCALNRANKS', 'HYDI_', 'HYDRA_')


@pytest.fixture(scope='module')
def no_mpi(tmp_path_factory):
    """The environment of a process in which ``import mpi4py`` fails, outside any MPI launcher."""
    blocker = tmp_path_factory.mktemp('no-mpi')
    (blocker / 'mpi4py').mkdir()
    (blocker / 'mpi4py' / '__init__.py').write_text(
        "raise ModuleNotFoundError(\"No module named 'mpi4py'\", name='mpi4py')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARIABLES)}
    env.update(PYTHONPATH=str(blocker), OMP_NUM_THREADS='1')
    return env


def layerasync_command(env, cwd, *args):
    return subprocess.run([sys.executable, '-m', 'layerasync', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_no_import_error(out):
    for text in ('Traceback', 'ModuleNotFoundError', 'ImportError'):
        assert text not in out.stderr, out.stderr


def test_the_blocker_blocks(no_mpi, tmp_path):
    out = subprocess.run([sys.executable, '-c', 'import mpi4py'], cwd=tmp_path, env=no_mpi,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "No module named 'mpi4py'" in out.stderr


def test_train_test_and_time_run_without_mpi(no_mpi, tmp_path):
    out = layerasync_command(no_mpi, tmp_path, 'train', '--solver', 'digits', '--set',
                             'max_iter=20', '--no-progress')
    assert out.returncode == 0, out.stderr
    assert 'Optimization Done.' in out.stdout
    assert_no_import_error(out)
    weights = tmp_path / 'snapshots' / 'digits_iter_20.weights.npz'
    assert weights.exists()
    out = layerasync_command(no_mpi, tmp_path, 'test', '--model', 'digits', '--weights',
                             str(weights), '--iterations', '1')
    assert out.returncode == 0, out.stderr
    assert 'accuracy = ' in out.stdout
    out = layerasync_command(no_mpi, tmp_path, 'time', '--model', 'digits', '--iterations', '1')
    assert out.returncode == 0, out.stderr
    assert 'Average forward-backward' in out.stdout


def test_ps_sync_in_one_process_trains_without_mpi(no_mpi, tmp_path):
    out = layerasync_command(no_mpi, tmp_path, 'train', '--solver', 'digits', '--strategy',
                             'ps-sync', '--set', 'max_iter=20', '--set',
                             'snapshot_after_train=false', '--no-progress')
    assert out.returncode == 0, out.stderr
    assert 'strategy ps-sync, 1 rank' in out.stdout
    assert_no_import_error(out)


@pytest.mark.parametrize('args, message', [
    (['train', '--solver', 'digits', '--set', 'lr_policy=cosinus'],
     "layerasync train: error: ")
])
def test_errors_are_the_commands_own(no_mpi, tmp_path, args, message):
    out = layerasync_command(no_mpi, tmp_path, *args)
    assert out.returncode == 1
    assert message in out.stderr and "unknown lr_policy 'cosinus'" in out.stderr
    assert_no_import_error(out)


def test_bench_says_it_needs_mpi(no_mpi, tmp_path):
    out = layerasync_command(no_mpi, tmp_path, 'bench', '--model', 'lenet')
    assert out.returncode == 1
    assert ("layerasync bench runs over MPI, but mpi4py cannot be imported (No module named "
            "'mpi4py'; pip install 'layerasync[mpi]'); `layerasync time --model M` times the "
            'net in one process without MPI') in out.stderr, out.stderr
    assert 'Traceback' not in out.stderr


# -- the boundary, statically ------------------------------------------------------

# Imported only by code that runs under MPI (``layerasync.ps.run`` on a server,
# the worker strategy when given a communicator).
MPI_ONLY = {'layerasync.ps.wire', 'layerasync.ps.server'}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_time_statements(tree):
    """The statements that run when the module is imported: not function bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imported_names(node, name, is_package, known):
    """Absolute names of the modules an import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = name if is_package else name.rpartition('.')[0]
    for _ in range(node.level - 1):
        package = package.rpartition('.')[0]
    base = (f'{package}.{node.module}' if node.module else package) if node.level else node.module
    names = [base]
    # ``from pkg import mod`` loads pkg.mod when it is a module
    names += [f'{base}.{a.name}' for a in node.names if f'{base}.{a.name}' in known]
    return names


def is_mpi4py(name):
    return name.split('.')[0] == 'mpi4py'


def module_imports():
    """{module: absolute names it imports when imported}, and the modules with
    an mpi4py import anywhere (in a function too), over the package."""
    files = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    imports, mention = {}, set()
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == '__init__.py'

        def names(nodes):
            return {n for node in nodes if isinstance(node, (ast.Import, ast.ImportFrom))
                    for n in imported_names(node, name, is_package, files)}
        imports[name] = names(import_time_statements(tree))
        if any(map(is_mpi4py, names(ast.walk(tree)))):
            mention.add(name)
    return imports, mention


def parents(name):
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = name.split('.')
    return ['.'.join(parts[:k]) for k in range(1, len(parts) + 1)]


def loads_mpi4py(imports):
    """The modules whose import loads mpi4py, directly or through other modules."""
    loading, grew = set(), True
    while grew:
        grew = False
        for name, names in imports.items():
            if name not in loading and any(
                    is_mpi4py(n) or loading.intersection(parents(n)) for n in names | {name}):
                loading.add(name)
                grew = True
    return loading


def in_boundary(name):
    """In ``layerasync.comm`` or ``layerasync.launch`` (the packages or their modules)."""
    return name.split('.')[:2] in (['layerasync', 'comm'], ['layerasync', 'launch'])


def test_only_the_mpi_boundary_imports_mpi4py():
    imports, mention = module_imports()
    # The walk sees the imports that exist.
    assert {'layerasync.comm.mpi', 'layerasync.comm.control', 'layerasync.comm.job'} <= mention
    outside = sorted(n for n in mention if not in_boundary(n))
    assert not outside, f'modules outside comm/ and launch/ that import mpi4py: {outside}'
    loading = loads_mpi4py(imports)
    assert {'layerasync.comm.mpi', 'layerasync.ps.server'} <= loading
    wrong = sorted(n for n in loading if not (in_boundary(n) or n in MPI_ONLY))
    assert not wrong, f'modules whose import loads mpi4py: {wrong}'
