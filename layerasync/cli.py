"""The ``layerasync`` command, shaped after Caffe's tool.

    layerasync train --solver S [--weights W | --snapshot S] [--set field=value ...]
    layerasync test  --model M --weights W [--iterations N]
    layerasync time  --model M [--iterations N] [--batch B] [--json FILE]
    layerasync demo [--text]
    layerasync sample --model M --weights W [--prompt TEXT] [--length N]
    layerasync bench --model M            (under mpirun: every strategy side by side)
    layerasync launch [--np N --hostfile F --fabric ib ...] -- train ...
    layerasync cluster up|status|down     (an emulated cluster on this machine)
    layerasync sim --profile P.json --fabric ib-edr --ranks 2,4,...,256
    layerasync plot timeline|metrics ...

``--solver``/``--model`` take a file or the name of a zoo model (``lenet``,
``digits``, ...). Run under ``mpirun -n P`` to train on P ranks.
"""
import argparse
import json
import os
import signal
import sys
import time

from . import bench, models, plot, proto, ps, schema, strategies, tune
from ._args import (add_compute_arguments, compression, count, layer_types, replayed_compute,
                    seconds)
from ._threads import blas_threads
from .signals import EFFECTS, Interrupted, SignalEffects
from .launch import cli as launch_cli
from .sim import cli as sim_cli

__all__ = ['main']


def _data_options(args, rank=0, size=1):
    from .data import DataOptions
    return DataOptions(rank=rank, world_size=size, synthetic=args.synthetic,
                       root=args.data_root, source=args.source)


def _apply_overrides(param, settings):
    """``--set field=value``: any SolverParameter field, in prototxt syntax."""
    for item in settings:
        field, sep, value = item.partition('=')
        spec = param.schema.fields.get(field.strip())
        if not sep or spec is None:
            raise SystemExit(f"layerasync: --set {item!r}: expected FIELD=VALUE with a solver "
                             f'field; known fields: {param.schema.known()}')
        if spec.kind == 'str' and not value.strip().startswith(('"', "'")):
            value = json.dumps(value)
        parsed = proto.parse(f'{field}: {value}', schema.SolverParameter, f'--set {field}')
        param.update(parsed)   # keeps the location: errors then name '--set field'
    return param


# -- commands -----------------------------------------------------------------

def _mpi(args, required=None):
    """COMM_WORLD when launched by an MPI launcher (or ``--mpi``), else None.

    ``required``: the command cannot run without MPI; MPI starts in any case,
    and this text (what to do instead) ends the error when mpi4py is missing.
    """
    from .comm import init_mpi, under_mpi_launcher
    if not (required or args.mpi or under_mpi_launcher()):
        return None
    try:
        return init_mpi(args.progress)
    except ImportError as e:
        why = 'runs over MPI' if required else 'was started by an MPI launcher (or --mpi)'
        raise SystemExit(f"layerasync {args.command} {why}, but mpi4py cannot be imported "
                         f"({e}; pip install 'layerasync[mpi]')"
                         + (f'; {required}' if required else '')) from None


def _apply_settings_file(args):
    """``--settings FILE`` (written by ``layerasync tune``): its values replace
    the communication flags left at their defaults; flags given otherwise win."""
    if not getattr(args, 'settings', None) or getattr(args, '_settings_applied', False):
        return
    from .tune import defaults, load_settings
    try:
        tuned = load_settings(args.settings)
    except ValueError as e:
        raise SystemExit(f'layerasync: --settings {e}') from None
    default = defaults()
    for name, value in tuned.items():
        if getattr(args, name) == default[name]:
            setattr(args, name, value)
    args._settings_applied = True


def _comm_settings(args):
    from .comm import SCHEDULERS
    _apply_settings_file(args)
    return dict(fusion_bytes=args.fusion_bytes, chunk_bytes=args.chunk_bytes,
                max_in_flight=args.in_flight,
                priority=SCHEDULERS[args.scheduler],
                progress=args.progress, compress=args.compress)


def cmd_train(args):
    from .solver import get_solver, load_solver_param, remove_solver_layers
    if args.weights and args.snapshot:
        raise SystemExit('layerasync train: give --weights (fine-tune) or --snapshot (resume), not both')
    if args.trace_link and not args.trace:
        raise SystemExit('layerasync train: --trace-link samples into the timeline: give --trace FILE too')
    param = _apply_overrides(load_solver_param(models.resolve(args.solver, 'solver')), args.set)
    if args.remove_layers:
        remove_solver_layers(param, args.remove_layers)
    world = _mpi(args)
    trace = None
    if args.trace:
        from .trace import Trace
        trace = Trace(world.Get_rank() if world is not None else 0)
        if args.trace_link:
            trace.sample_link(args.trace_link)
    # Every rank records signals from here on (servers too: they stop when the workers do).
    signals = SignalEffects(args.sigint_effect, args.sighup_effect).install()
    try:
        if world is not None and args.strategy in ps.NAMES:
            role = ps.role(world, args.servers)
            solver = get_solver(param, seed=args.seed, data=role.data(_data_options(args)))
            _replay(args, solver, world)
            # One watchdog over the whole job: the servers answer a stalled worker.
            watch = _open_watch(world, args, role.describe)
            try:
                results = ps.run(world, args.strategy, solver,
                                 lambda s: _train(args, s, trace, signals, watch),
                                 args.servers, args.staleness, trace, watch)
            except Interrupted:
                _close_watch(watch)   # every rank stopped: the workers at one boundary
                raise
            finally:
                solver.close()
            _close_watch(watch)
            return results
        rank, size = (world.Get_rank(), world.Get_size()) if world is not None else (0, 1)
        solver = get_solver(param, seed=args.seed, data=_data_options(args, rank, size))
        _replay(args, solver, world)
        ps_settings = (dict(servers=args.servers, staleness=args.staleness)
                       if args.strategy in ps.NAMES else {})
        strategy = strategies.get_strategy(args.strategy, solver, world, trace=trace,
                                           **_comm_settings(args), **ps_settings)
        try:
            results = _train(args, strategy, trace, signals)
        except Interrupted:
            strategy.close()   # collective: every rank stopped at the same boundary
            raise
        finally:
            solver.close()
        strategy.close()
        return results
    finally:
        signals.restore()


def _replay(args, solver, world):
    """``--compute replay``: the train net's layers wait instead of computing;
    the test nets would compute, so the run does not test."""
    rank = world.Get_rank() if world is not None else 0
    quiet = args.quiet or rank != 0
    if replayed_compute(args, solver.net, world, log=lambda m: quiet or print(m, file=sys.stderr)):
        solver.param.test_interval = 0
        if not quiet:
            print('No tests: the test nets are not replayed', file=sys.stderr)


def _train(args, strategy, trace, signals, watch=None):
    """Train ``strategy``'s solver as ``args`` say (the strategy is built, not yet
    started); returns (the last test results, seconds of training). ``watch``:
    the caller's stall watchdog (None: one over the strategy's ranks, opened
    and closed here)."""
    from .snapshot import load_weights
    from .trainer import Log, Trainer
    solver = strategy.solver
    log = Log(strategy.rank, quiet=args.quiet)
    extra = solver.restore(args.snapshot) if args.snapshot else None
    if args.weights:
        log(f'Fine-tuning from {args.weights}: {load_weights(solver.net, args.weights)}')
    if extra:
        strategy.load_state_dict(extra)
    own_watch = watch is None and strategy.control is not None
    if own_watch:
        watch = _open_watch(strategy.control.comm, args)
    trainer = Trainer(solver, strategy, metrics=args.metrics, log=log,
                      progress=False if args.no_progress else None, trace=trace,
                      signals=signals, watch=watch)
    if args.snapshot:
        trainer.snapshots.append((solver.iter, args.snapshot))   # a candidate after a divergence
    if strategy.control is not None:
        strategy.control.barrier()   # a common start for timings and traces
    start = time.perf_counter()
    try:
        results = trainer.run()
    except Interrupted:
        if own_watch:
            _close_watch(watch)   # every rank stopped at the same boundary
        raise
    if own_watch:
        _close_watch(watch)
    wall = time.perf_counter() - start
    log(f'Trained {solver.iter} iterations in {wall:.1f} s')
    if trace is not None:
        trace.write(args.trace, strategy.control)
        log(f'Timeline written to {args.trace}')
    return results, wall


def _open_watch(comm, args, describe=None):
    """Collective over ``comm``: the stall watchdog of its ranks, installed."""
    from .comm import stall
    watch = stall.StallWatch(comm, args.stall_timeout, describe=describe)
    stall.install(watch)
    return watch


def _close_watch(watch):
    """Collective: stop the stall watchdog (after training, on every rank)."""
    if watch is not None:
        from .comm import stall
        stall.uninstall()
        watch.close()


def _build_net(args, phase):
    from .net import Net, load_net_param, remove_layers, set_batch_size
    param = load_net_param(models.resolve(args.model, 'net'))
    if getattr(args, 'batch', None):
        set_batch_size(param, args.batch)
    if getattr(args, 'remove_layers', None):
        remove_layers(param, args.remove_layers)
    return Net(param, phase, data=_data_options(args))


def cmd_test(args):
    from .snapshot import load_weights
    from .solver import score
    from .timing import fill_inputs
    net = _build_net(args, 'TEST')
    if args.weights:
        print(f'Weights from {args.weights}: {load_weights(net, args.weights)}', file=sys.stderr)
    if net.inputs:
        fill_inputs(net)
    for name, value in score(net, args.iterations).items():
        print(f'{name} = {value}')


def cmd_time(args):
    from .timing import fill_inputs, format_profile, profile_net
    net = _build_net(args, args.phase)
    if not net.layers:
        raise ValueError(f"{net.param.where}: net '{net.name}' has no layers in phase "
                         f'{args.phase}: nothing to time')
    fill_inputs(net)
    profile = profile_net(net, args.iterations)
    print(format_profile(profile))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(profile, f, indent=1)
        print(f'profile written to {args.json}')


def cmd_demo(args):
    if args.text:
        return _demo_text(args)
    if args.iterations:
        raise SystemExit('layerasync demo: --iterations is for --text (the digits demo trains '
                         'its solver\'s max_iter)')
    train = parser().parse_args(['train', '--solver', 'digits'] + (['--quiet'] if args.quiet else []))
    results, wall = cmd_train(train)
    accuracy = results.get('test/accuracy')
    print(f'\nEmbedded digits: test accuracy {accuracy:.4f} after training for {wall:.1f} s '
          f'(1 process, {blas_threads()} BLAS threads)')


def _demo_text(args):
    """Train gpt-mini on the embedded text; its validation loss beside a bigram
    model's, and a sample from the final weights."""
    from .data import DataOptions, open_source
    from .generate import bigram_loss
    from .solver import load_solver_param
    extra = ['--quiet'] if args.quiet else []
    if args.iterations:
        extra += ['--set', f'max_iter={args.iterations}']
        if args.iterations % 250:   # the solver tests every 250: test at the end instead
            extra += ['--set', f'test_interval={args.iterations}']
    train = parser().parse_args(['train', '--solver', 'gpt-mini'] + extra)
    results, wall = cmd_train(train)
    param = _apply_overrides(load_solver_param(models.resolve('gpt-mini', 'solver')), train.set)
    options = DataOptions(prefetch=False)
    bigram = bigram_loss(open_source('text:128', 'TRAIN', options),
                         open_source('text:128', 'TEST', options))
    weights = f'{param.snapshot_prefix}_iter_{param.max_iter}.weights.npz'
    print(f"\ngpt-mini on the embedded text: validation loss {results['test/loss']:.3f} nats "
          f'per character (a character bigram model: {bigram:.3f}) after training for '
          f'{wall:.1f} s (1 process, {blas_threads()} BLAS threads)')
    sample = parser().parse_args(['sample', '--model', 'gpt-mini', '--weights', weights])
    print(f'A sample (layerasync sample --model gpt-mini --weights {weights}):\n')
    cmd_sample(sample)


def cmd_sample(args):
    from .generate import Generator, text_net
    from .snapshot import load_weights
    net = text_net(models.resolve(args.model, 'net'), _data_options(args))
    if args.weights:
        print(f'Weights from {args.weights}: {load_weights(net, args.weights)}', file=sys.stderr)
    try:
        text = Generator(net).sample(args.prompt, args.length, args.temperature, args.seed)
    finally:
        net.close()
    print(text)


# -- argument parsing -----------------------------------------------------------

def _data_arguments(p):
    p.add_argument('--synthetic', action='store_true',
                   help='replace every data source by synthetic samples of the same shape')
    p.add_argument('--data-root', metavar='DIR', help='resolve relative data paths from DIR')
    p.add_argument('--source', metavar='SOURCE',
                   help='read SOURCE in every Data layer instead of its data_param source, e.g. '
                        '--source mnist-subset for lenet (sources: docs/training.md)')


def _comm_arguments(p):
    from .comm import DEFAULTS as d, IN_FLIGHT, PRIORITY_ABOVE, SCHEDULERS, scheduler_name
    g = p.add_argument_group('communication (with mpirun -n P); defaults chosen by measurement')
    g.add_argument('--mpi', action='store_true', help='use MPI even if no launcher is detected')
    g.add_argument('--fusion-bytes', type=count(0), default=d['fusion_bytes'], metavar='N',
                   help=f"fuse consecutive layers into buckets of at least N bytes "
                        f"(0: one per layer; default {d['fusion_bytes']})")
    g.add_argument('--chunk-bytes', type=count(0), default=d['chunk_bytes'], metavar='N',
                   help=f"cut buckets into chunks of at most N bytes (0: no cutting; "
                        f"default {d['chunk_bytes']})")
    g.add_argument('--in-flight', type=count(1), default=d['max_in_flight'], metavar='N',
                   help='at most N chunk reductions in flight (default: '
                        f"{IN_FLIGHT[False]} under fifo, {IN_FLIGHT[True]} under priority)")
    g.add_argument('--scheduler', choices=list(SCHEDULERS),
                   default=scheduler_name(d['priority']),
                   help='post order: as ready (fifo), or forward priority negotiated among the '
                        'ranks; auto (default): priority where the gradients\' allreduce is '
                        f'estimated at {PRIORITY_ABOVE * 1e3:g} ms or more (a probe at start-up)')
    g.add_argument('--settings', metavar='FILE.json',
                   help='communication settings chosen by `layerasync tune`; flags given here '
                        'win over them')
    g.add_argument('--compress', type=compression, default=d['compress'],
                   metavar='fp16|bf16|topk:RATIO|powersgd:RANK',
                   help='compress the gradients on the wire: 16-bit floats (half the bytes; '
                        'IEEE half with the sum scaled by 1/P, or bfloat16), the share RATIO '
                        'of largest entries of each chunk, or PowerSGD\'s rank-RANK factors '
                        '(both with error feedback); default: float32')
    g.add_argument('--progress', choices=['poll', 'thread', 'mpi'], default=d['progress'],
                   help='who advances in-flight reductions: calls between (and inside long) '
                        'layers, a progress thread, or the MPI library\'s own thread')


def parser():
    top = argparse.ArgumentParser(prog='layerasync', description=__doc__.split('\n')[0])
    sub = top.add_subparsers(dest='command', required=True)

    p = sub.add_parser('train', help='train a net from a solver file')
    p.add_argument('--solver', required=True, help='solver prototxt, or a zoo model name')
    p.add_argument('--weights', help='initial weights (.weights.npz) to fine-tune from')
    p.add_argument('--snapshot', help='resume from a .solverstate.npz')
    p.add_argument('--strategy', default='sync', help=strategies.known())
    p.add_argument('--servers', type=count(1), default=1, metavar='S',
                   help='ps-*: the last S ranks serve parameters, the others train (default 1)')
    p.add_argument('--staleness', type=count(0), metavar='S',
                   help='ps-async: no worker runs more than S iterations ahead of the slowest '
                        '(default 2; 0 is synchronous)')
    p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                   help='override a solver field, e.g. --set max_iter=100')
    p.add_argument('--seed', type=int, help='random seed (default: the solver\'s random_seed, else 0)')
    p.add_argument('--metrics', metavar='FILE', help='append metrics as JSON Lines to FILE')
    p.add_argument('--trace', metavar='FILE',
                   help='write a Chrome/Perfetto timeline of every rank to FILE')
    p.add_argument('--trace-link', metavar='DEV',
                   help="with --trace: sample network device DEV's byte counters (e.g. eth0) "
                        'into the timeline')
    p.add_argument('--remove-layers', type=layer_types, metavar='TYPE[,TYPE]',
                   help="take the layers of these types out of the solver's net (see bench)")
    p.add_argument('--sigint-effect', choices=EFFECTS, default='stop',
                   help='what SIGINT and SIGTERM do at the next iteration boundary: snapshot and '
                        'stop (default), snapshot and go on, or nothing')
    p.add_argument('--sighup-effect', choices=EFFECTS, default='snapshot',
                   help='what SIGHUP does (default: snapshot and go on)')
    p.add_argument('--stall-timeout', type=seconds, metavar='SECONDS',
                   help='end the job when a rank waits longer than this for the others, naming '
                        'the ranks that do not answer (default: 10 x the slowest iteration so '
                        'far, at least 120 s)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--quiet', action='store_true', help='no log lines')
    _data_arguments(p)
    add_compute_arguments(p)
    _comm_arguments(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser('test', help='score a trained net')
    p.add_argument('--model', required=True, help='net prototxt, or a zoo model name')
    p.add_argument('--weights', help='weights file (.weights.npz)')
    p.add_argument('--iterations', type=count(1), default=50)
    _data_arguments(p)
    p.set_defaults(run=cmd_test)

    p = sub.add_parser('time', help='per-layer forward/backward timing')
    p.add_argument('--model', required=True, help='net prototxt, or a zoo model name')
    p.add_argument('--iterations', type=count(1), default=10)
    p.add_argument('--batch', type=count(1), help='batch size (default: the prototxt\'s)')
    p.add_argument('--phase', default='TRAIN', choices=['TRAIN', 'TEST'])
    p.add_argument('--remove-layers', type=layer_types, metavar='TYPE[,TYPE]',
                   help='take the layers of these types out of the net (see bench)')
    p.add_argument('--json', metavar='FILE', help='write the profile as JSON (the simulator reads it)')
    _data_arguments(p)
    p.set_defaults(run=cmd_time)

    plot.add_commands(sub)
    bench.add_commands(sub, _comm_arguments, _comm_settings, _mpi)
    tune.add_commands(sub, _mpi)
    launch_cli.add_commands(sub)
    sim_cli.add_commands(sub)

    p = sub.add_parser('sample', help='generate text from a trained character-level net')
    p.add_argument('--model', required=True, help='net prototxt, or a zoo model name (gpt-mini)')
    p.add_argument('--weights', help='weights file (.weights.npz)')
    p.add_argument('--prompt', default='\n', help='the text to continue (default: a new line)')
    p.add_argument('--length', type=count(1), default=400, help='characters to generate')
    p.add_argument('--temperature', type=float, default=0.8,
                   help='divides the logits: below 1 safer, above 1 more varied (default 0.8)')
    p.add_argument('--seed', type=int, default=0, help='seed of the draws (default 0)')
    _data_arguments(p)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser('demo', help='train the embedded digits data set and report accuracy '
                                    '(--text: gpt-mini on the embedded English text)')
    p.add_argument('--text', action='store_true',
                   help='train gpt-mini on the English text that ships with Python instead')
    p.add_argument('--iterations', type=count(1), metavar='N',
                   help='with --text: train N iterations (default: the solver\'s max_iter)')
    p.add_argument('--quiet', action='store_true')
    p.set_defaults(run=cmd_demo)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except Interrupted as stop:
        # Every rank stopped at the same boundary, after the snapshot: rank 0 says so.
        if _world_rank() == 0:
            print(f'layerasync {args.command}: {stop}', file=sys.stderr, flush=True)
        return 128 + stop.signum
    except KeyboardInterrupt:
        _fail(args, RuntimeError('interrupted (a second SIGINT): stopped without a snapshot'))
        return 128 + signal.SIGINT
    except Exception as e:
        _fail(args, e)
        return 1
    return 0


def _world_rank():
    mpi = sys.modules.get('mpi4py.MPI')   # loaded only if this run uses MPI
    running = mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()
    return mpi.COMM_WORLD.Get_rank() if running else 0


def _fail(args, error):
    """Show the error (with the rank) and, under MPI, end every rank of the job:
    the others could otherwise wait forever in a collective this rank never reaches.

    An error all ranks raised together (a failed start-up agreement check) is shown
    once, by rank 0, and every rank exits normally with status 1.
    """
    mpi = sys.modules.get('mpi4py.MPI')   # loaded only if this run uses MPI
    running = mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()
    world = mpi.COMM_WORLD if running and mpi.COMM_WORLD.Get_size() > 1 else None
    agreed = False
    if world is not None:
        from .comm.control import AgreedError
        agreed = isinstance(error, AgreedError)
    if agreed and world.Get_rank() != 0:
        return
    where = f'rank {world.Get_rank()}: ' if world is not None else ''
    people = isinstance(error, (ValueError, OSError, RuntimeError))
    if os.environ.get('LAYERASYNC_DEBUG') or not people:
        import traceback
        traceback.print_exc()
    print(f'layerasync {args.command}: {where}error: {error}', file=sys.stderr, flush=True)
    if world is not None and not agreed:
        # The launcher forwards our stderr asynchronously; aborting at once can kill
        # the job before it has read the message we just wrote.
        time.sleep(0.5)
        world.Abort(1)


if __name__ == '__main__':
    sys.exit(main())
