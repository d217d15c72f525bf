"""The performance model on cases small enough to work out by hand.

Times in the schedule tests are plain numbers (the model is unit-free); each
expected value is derived in the test's comment.
"""
import argparse
import csv
import json
import math
from dataclasses import replace

import pytest

from layerasync.blob import backward_layout
from layerasync.comm import DEFAULTS
from layerasync.comm.buckets import make_buckets
from layerasync.sim import Network, fabric, load_profile, make_plan, simulate
from layerasync.sim.calibrate import fit_network, fit_report
from layerasync.sim.cli import add_commands, parse_ranks
from layerasync.sim.model import parse_latency
from layerasync.sim.schedule import Plan, iteration_ends, modelled_strategy, steady_iteration


def plan(forward, backward, update, counts, busy, latency=None, chunk_count=0, **kw):
    """A Plan over layers with ``counts[l]`` float32 parameters (arena in backward order)."""
    buckets, chunks = make_buckets(backward_layout(dict(enumerate(counts))), 0, 4 * chunk_count)
    n = len(chunks)
    return Plan(forward, backward, update, buckets, chunks,
                chunk_busy_s=busy if isinstance(busy, list) else [busy] * n,
                chunk_latency_s=None if latency is None else [latency] * n, **kw)


# -- network model --------------------------------------------------------------

def test_allreduce_formulas():
    n, p = 1e6, 4
    ring = Network(alpha=1e-6, beta=1e9, gamma=1e-10)
    # 2(P-1) alpha + 2(P-1)/P n/beta + (P-1)/P n gamma
    assert ring.allreduce_time(n, p) == pytest.approx(6e-6 + 1.5e-3 + 0.75e-4)
    assert ring.allreduce_parts(n, p) == pytest.approx((6e-6, 1.5e-3 + 0.75e-4))
    rd = ring.with_(algorithm='recursive-doubling')
    # log2(P) (alpha + n/beta + n gamma)
    assert rd.allreduce_time(n, p) == pytest.approx(2 * (1e-6 + 1e-3 + 1e-4))
    rab = ring.with_(algorithm='rabenseifner')
    assert rab.allreduce_time(n, p) == pytest.approx(4e-6 + 1.5e-3 + 0.75e-4)
    auto = ring.with_(algorithm='auto')
    assert auto.allreduce_time(n, p) == pytest.approx(rab.allreduce_time(n, p))
    assert auto.allreduce_time(8, 256) == pytest.approx(rd.allreduce_time(8, 256))
    assert ring.allreduce_time(n, 1) == 0 and ring.allreduce_time(0, 8) == 0


def test_a_step_cost_is_busy_time_per_message_step():
    n, p, sigma = 1e6, 8, 1e-4
    plain = Network(alpha=1e-6, beta=1e9)
    for algorithm, steps in (('ring', 14), ('recursive-doubling', 3), ('rabenseifner', 6)):
        net, costed = plain.with_(algorithm=algorithm), plain.with_(algorithm=algorithm, sigma=sigma)
        (lat0, busy0), (lat1, busy1) = net.allreduce_parts(n, p), costed.allreduce_parts(n, p)
        assert lat1 == lat0 and busy1 == pytest.approx(busy0 + steps * sigma), algorithm
    costed = plain.with_(sigma=sigma)
    # The reduce-scatter and the all-gather are the ring's halves, step costs included.
    halves = [sum(costed.reduce_scatter_parts(n, p)), sum(costed.allgather_parts(n, p))]
    assert sum(halves) == pytest.approx(costed.allreduce_time(n, p))
    assert costed.allreduce_time(n, 1) == 0
    with pytest.raises(ValueError, match='step cost >= 0'):
        Network(1e-6, 1e9, sigma=-1)


def test_network_rejects_nonsense():
    with pytest.raises(ValueError, match='known: ring'):
        Network(1e-6, 1e9, algorithm='tree')
    with pytest.raises(ValueError, match='bandwidth > 0'):
        Network(1e-6, 0)
    with pytest.raises(ValueError, match='known: '):
        fabric('token-ring')


def test_parse_latency_and_ranks():
    assert parse_latency('2us') == pytest.approx(2e-6)
    assert parse_latency('0.5ms') == pytest.approx(5e-4)
    assert parse_ranks('2,4,8,...,256') == [2, 4, 8, 16, 32, 64, 128, 256]
    assert parse_ranks('1,3,9,...,81') == [1, 3, 9, 27, 81]
    assert parse_ranks('1,2,6') == [1, 2, 6]
    with pytest.raises(ValueError, match="latency '3': expected a number and a unit"):
        parse_latency('3')
    with pytest.raises(ValueError, match='doubling run'):
        parse_ranks('2,...,8')


def test_fit_recovers_a_ring_network():
    truth = Network(alpha=5e-6, beta=2e9)
    sizes = [4 << 10 << 2 * k for k in range(8)]
    sweep = {'ranks': 2, 'sizes': sizes,
             'iallreduce_s': [truth.allreduce_time(n, 2) for n in sizes]}
    fitted = fit_network(sweep)
    assert fitted.alpha == pytest.approx(5e-6, rel=1e-6)
    assert fitted.beta == pytest.approx(2e9, rel=1e-6)
    assert all(row.endswith('+0%') or row.endswith('-0%') for row in fit_report(sweep, fitted)[1:])


# -- schedule: two layers, every number by hand -------------------------------------

# Layers 0 and 1: forward 1 each, backward 1 each, update 0.5 each; one chunk
# per layer, each busy on the link for 3, no latency. Backward ends at 4; layer
# 1's chunk is ready at 3, layer 0's at 4. Compute alone: 5.
TWO = dict(forward=[1, 1], backward=[1, 1], update=[0.5, 0.5], counts=[10, 10], busy=3)


@pytest.mark.parametrize('strategy, period', [
    ('sync', 11),                 # 4 + both chunks after backward (6) + updates (1)
    ('layerwise', 10),            # chunks run 3..6 and 6..9; wait to 9, updates (1)
    ('layerwise:ordered', 9.5),   # layer 1's bucket at 6 (+0.5), layer 0's at 9 (+0.5)
    ('layerwise:lazy', 9.5),      # the same order here
    ('async-layerwise', 10),      # next forward waits for layer 0's chunk (5 after the end)
    ('delayed:1', 6),             # hidden but for the link: it is busy 6 per iteration
])
def test_two_layers_by_hand(strategy, period):
    assert steady_iteration(plan(**TWO), strategy) == pytest.approx(period)


def test_sharded_by_hand():
    # TWO on 2 ranks, each chunk's reduce-scatter and all-gather busy 1.5 (half the
    # allreduce's 3), shard updates 0.25 (half a layer). Iteration 1 on: layer 0's
    # reduce-scatter ends at 6 (1's at 4.5); update 0 to 6.25, gather 0 6.25..7.75;
    # update 1 to 6.5, gather 1 queued 7.75..9.25; forward 0 7.75..8.75, forward 1
    # 9.25..10.25, backward to 12.25: a period of 8.25 (async-layerwise: 10).
    p = replace(plan(**TWO), ranks=2, scatter_parts=[(0, 1.5)] * 2, gather_parts=[(0, 1.5)] * 2)
    assert iteration_ends(p, 'sharded', 3) == pytest.approx([4, 12.25, 20.5])
    assert steady_iteration(p, 'sharded') == pytest.approx(8.25)
    one = replace(p, ranks=1, scatter_parts=[(0, 0)] * 2, gather_parts=[(0, 0)] * 2)
    assert steady_iteration(one, 'sharded') == pytest.approx(5)


def test_parameter_servers_by_hand():
    # One layer of n = 4 MB, forward 1, backward 2 (s), on a link of beta = 4 MB/s,
    # servers updating 8 MB/s: W = 2 workers push (1 s), the server sums and
    # updates ((W + 1) n / rate = 1.5 s) and answers both (W n / beta = 2 s); the
    # next forward waits for it: a period of 1 + 2 + 1 + 1.5 + 2 = 7.5. A switch
    # port at the server (ingress) takes the two pushes in W n / beta = 2 s, not 1.
    n = 4_000_000
    p = replace(plan([1.0], [2.0], [0.0], [n // 4], 0.0), ranks=2, servers=1,
                network=Network(0.0, 4e6), param_bytes=[n], update_rate=8e6,
                server_ingress=False)
    for kind in ('ps-sync', 'ps-async'):   # identical workers: nothing for staleness to hide
        assert iteration_ends(p, kind, 2) == pytest.approx([3, 10.5])
        assert steady_iteration(p, kind) == pytest.approx(7.5)
    assert steady_iteration(replace(p, server_ingress=True), 'ps-sync') == pytest.approx(8.5)
    # Two servers split the layer: each half is pushed in 0.5 s; server 0 answers
    # its half at 3.5 + 0.75 + 1 = 5.25, server 1 (pushed 3.5..4) its own at
    # 4 + 0.75 + 1 = 5.75; the next iteration's forward starts then: ends 8.75.
    two = replace(p, servers=2)
    assert iteration_ends(two, 'ps-sync', 2) == pytest.approx([3, 8.75])


def test_a_straggler_sets_the_pace():
    # The others wait for it at every collective: the plan is the straggler's,
    # forward and backward F times longer, its update and the links unchanged.
    net = Network(1e-5, 1e8)
    slow = make_plan(profile_dict(), net, 4, straggler=1.5, update_rate=1e9)
    plain = make_plan(profile_dict(), net, 4, update_rate=1e9)
    assert slow.forward_s == pytest.approx([1.5 * f for f in plain.forward_s])
    assert slow.backward_s == pytest.approx([1.5 * b for b in plain.backward_s])
    assert (slow.update_s, slow.chunk_busy_s) == (plain.update_s, plain.chunk_busy_s)
    # One rank has nobody to be slower than.
    assert make_plan(profile_dict(), net, 1, straggler=1.5).forward_s == \
        make_plan(profile_dict(), net, 1).forward_s
    [sync, ps_sync] = simulate(profile_dict(), net, [4], ['sync', 'ps-sync'], straggler=1.5,
                               update_rate=1e9)
    assert sync.iteration_ms > simulate(profile_dict(), net, [4], ['sync'],
                                        update_rate=1e9)[0].iteration_ms
    with pytest.raises(ValueError, match='ps-async with a straggler is not modelled'):
        simulate(profile_dict(), net, [4], ['ps-async'], straggler=1.5, update_rate=1e9)
    with pytest.raises(ValueError, match='straggler factor must be positive'):
        make_plan(profile_dict(), net, 4, straggler=0)


def test_parameter_server_pieces_follow_the_job():
    from layerasync.sim.ps import pieces_of
    # Arena order is backward order: layer 2 (160 values) first, then layer 1 (96).
    # Two servers' shares are 128 values; the nearest blob boundary (160) is too
    # far, so layer 2 is cut at 128, as ps.layout.shard cuts a job's blobs.
    assert pieces_of([0, 384, 640], 2) == [(2, 0, 512), (2, 1, 128), (1, 1, 384)]
    assert sum(n for _, _, n in pieces_of([0, 384, 640], 3)) == 1024


def test_compression_halves_the_allreduce_not_sharded():
    profile = profile_dict()
    plain = make_plan(profile, fabric('10gbe'), 4, update_rate=1e9, scheduler='fifo')
    half = make_plan(profile, fabric('10gbe'), 4, update_rate=1e9, scheduler='fifo', compress='bf16')
    assert sum(half.chunk_busy_s) == pytest.approx(sum(plain.chunk_busy_s) / 2)
    assert half.scatter_parts == plain.scatter_parts and half.gather_parts == plain.gather_parts
    with pytest.raises(ValueError, match="unknown compression 'int8'; known: fp16, bf16"):
        make_plan(profile, fabric('10gbe'), 4, compress='int8')


def test_topk_and_powersgd_send_what_their_codecs_send():
    """topk: an all-gather of P k (index, value) pairs per chunk; powersgd: per
    bucket, an allreduce of the P factors then of the Q factors; the packing at
    codec_rate adds to each chunk's busy time."""
    profile, net = profile_dict(), fabric('10gbe')
    # conv 1 MB as a (64, 4096) weight; fc 4 MB as (1024, 1023) and a 1024 bias
    profile['layers'][1]['blobs'] = [[64, 4096]]
    profile['layers'][3]['blobs'] = [[1024, 1023], [1024]]
    settings = dict(update_rate=1e9, scheduler='fifo', fusion_bytes=0, chunk_bytes=1 << 20)
    plain = make_plan(profile, net, 4, **settings)
    topk = make_plan(profile, net, 4, compress='topk:0.01', **settings)
    assert topk.chunks == plain.chunks
    for c, busy in zip(topk.chunks, topk.chunk_busy_s):
        k = math.ceil(0.01 * (c.stop - c.start))
        assert busy == pytest.approx(net.allgather_parts(4 * 8 * k, 4)[1])
    power = make_plan(profile, net, 4, compress='powersgd:4', **settings)
    assert len(power.chunks) == len(power.buckets) == 2   # whole buckets, fc first
    fc = [net.allreduce_parts(4 * v, 4) for v in (1024 * 4 + 1024, 1023 * 4)]
    assert power.chunk_busy_s[0] == pytest.approx(fc[0][1] + fc[1][1])
    assert power.chunk_latency_s[0] == pytest.approx(fc[0][0] + fc[1][0])
    slow = make_plan(profile, net, 4, compress='topk:0.01', codec_rate=1e9, **settings)
    for c, a, b in zip(slow.chunks, slow.chunk_busy_s, topk.chunk_busy_s):
        assert a - b == pytest.approx(4 * (c.stop - c.start) / 1e9)
    del profile['layers'][3]['blobs']
    with pytest.raises(ValueError, match="layer fc has no blob shapes"):
        make_plan(profile, net, 4, compress='powersgd:4', **settings)


def test_one_rank_has_no_communication():
    p = plan(**{**TWO, 'busy': 0})
    for strategy in ('sync', 'layerwise:lazy', 'async-layerwise', 'delayed:2'):
        assert steady_iteration(p, strategy) == pytest.approx(p.compute_s) == pytest.approx(5)


# Layer 1 holds three chunks, layer 0 one; each busy 0.5, one in flight.
# Forward 1 + 1; backward of layer 1 takes 1 (its chunks ready at 3), of layer 0
# 0.75 (ready at 3.75, end of backward). Layer 1's chunks run 3..3.5, 3.5..4;
# at 4 the choice is layer 1's last chunk or layer 0's.
OVERTAKE = dict(forward=[1, 1], backward=[0.75, 1], update=[0, 0], counts=[100, 300], busy=0.5,
                chunk_count=100, in_flight=1)


def test_priority_lets_the_first_layer_overtake():
    # priority: layer 0's chunk 4..4.5, the next forward starts at 4.5 instead of 3.75,
    # so 0.75 exposed; fifo: layer 1's last chunk first, layer 0's 4.5..5: 1.25 exposed.
    priority, fifo = plan(**OVERTAKE, priority=True), plan(**OVERTAKE, priority=False)
    assert steady_iteration(priority, 'async-layerwise') == pytest.approx(4.5)
    assert steady_iteration(fifo, 'async-layerwise') == pytest.approx(5.0)


def test_lazy_applies_in_completion_order():
    # With priority, layer 0's bucket (posted second, backward order) completes at 4.5,
    # before layer 1's at 5. Updates cost 1 each. ordered: wait 5, +1, +1 = 7;
    # lazy: layer 0 at 4.5 (+1 = 5.5), then layer 1 (done) +1 = 6.5.
    p = plan(**{**OVERTAKE, 'update': [1, 1]}, priority=True)
    assert iteration_ends(p, 'layerwise:ordered', 1) == pytest.approx([7])
    assert iteration_ends(p, 'layerwise:lazy', 1) == pytest.approx([6.5])


def test_priority_rounds_delay_posts():
    # One chunk, busy 1, rounds of 0.25: posted 0.25 after backward ends at 2, done
    # at 3.25; wait_all then needs one more round to agree nothing is left: 3.5.
    # A wait for the bucket alone (ordered) does not: 3.25.
    p = plan([1], [1], [0], [10], busy=1, round_s=0.25)
    assert steady_iteration(p, 'sync') == pytest.approx(3.5)
    assert steady_iteration(p, 'layerwise:ordered') == pytest.approx(3.25)
    assert steady_iteration(plan([1], [1], [0], [10], busy=1, priority=False), 'sync') == 3


def test_hook_overhead_charges_every_layer_hook_but_syncs():
    # TWO with 0.1 per hook (4 an iteration). sync: unchanged, 11. ordered: layer
    # 1's chunk is ready at 3.3 (three hooks in), so the chunks run 3.3..6.3..9.3;
    # end 9.3 + 0.5 = 9.8: the hook after it is hidden behind communication.
    p = plan(**TWO, hook_s=0.1)
    assert steady_iteration(p, 'sync') == pytest.approx(11)
    assert steady_iteration(p, 'layerwise:ordered') == pytest.approx(9.8)


def test_delayed_hides_communication_up_to_k_iterations():
    # One layer, compute 2; one chunk: busy 0.5 then latency 3, ready at the end of
    # backward. sync: 2 + 3.5. delayed:K waits at the end of t for g(t-K):
    # e(t) = max(e(t-1) + 2, e(t-1-K) + 5.5). K=1: periods alternate 2 and 3.5
    # (mean 2.75); K=2: 3.5 <= 2 iterations of compute, fully hidden.
    p = plan([1], [1], [0], [10], busy=0.5, latency=3)
    assert steady_iteration(p, 'sync') == pytest.approx(5.5)
    assert steady_iteration(p, 'delayed:1') == pytest.approx(2.75)
    assert steady_iteration(p, 'delayed:2') == pytest.approx(2.0)


def test_latencies_overlap_when_several_chunks_are_in_flight():
    # Four chunks of busy 0.25 and latency 2, all ready at 2: one in flight
    # serialises the latencies (4 x 2.25), four overlap them (1 + 2).
    args = ([1], [1], [0], [400], 0.25)
    one = plan(*args, latency=2, chunk_count=100, in_flight=1, priority=False)
    four = plan(*args, latency=2, chunk_count=100, in_flight=4, priority=False)
    assert one.comm_alone_s() == pytest.approx(9)
    assert four.comm_alone_s() == pytest.approx(3)
    assert steady_iteration(four, 'sync') == pytest.approx(5)


def test_strategy_names_are_the_trainers():
    assert modelled_strategy('layerwise') == ('layerwise', 'all')
    assert modelled_strategy('delayed:3') == ('delayed', 3)
    for bad, message in [('delayed', 'delayed:K needs a delay K >= 1'),
                         ('delayed:0', 'delayed:K needs a delay K >= 1'),
                         ('layerwise:random', "apply order 'random' is not one of all, ordered"),
                         ('sync:1', "strategy 'sync' takes no argument"),
                         ('fastest', "unknown strategy 'fastest'"),
                         ('local-sgd:2', "strategy 'local-sgd:2' is not modelled by the "
                                         'simulator; it models sync, layerwise')]:
        with pytest.raises(ValueError, match=message):
            modelled_strategy(bad)
        with pytest.raises(ValueError, match=message):
            simulate(profile_dict(), fabric('shm'), [2], ['sync', bad], update_rate=1e9)


# -- the API on a profile ----------------------------------------------------------

def profile_dict():
    """A small profile: 4 layers, two with parameters (1 MB and 4 MB)."""
    layers = [dict(name=n, forward_ms=f, backward_ms=b, param_bytes=w)
              for n, f, b, w in [('data', 0.1, 0, 0), ('conv', 5, 10, 1 << 20),
                                 ('relu', 0.5, 0.5, 0), ('fc', 2, 4, 4 << 20)]]
    return {'net': 'tiny', 'batch': 16, 'layers': layers}


def test_layout_is_backward_order_packed():
    assert backward_layout({0: 0, 1: 6, 2: 0, 3: 4}) == [(3, slice(0, 4)), (1, slice(4, 10))]
    assert backward_layout({1: 6, 3: 4}) == backward_layout({3: 4, 1: 6})


def test_plan_matches_the_arena_layout():
    p = make_plan(profile_dict(), fabric('ib-edr'), 4, fusion_bytes=0, chunk_bytes=1 << 20,
                  update_rate=1e9)
    # Arena in backward order: fc (4 chunks of 1 MB) then conv (1 chunk).
    assert [b.layers for b in p.buckets] == [[3], [1]]
    assert [c.priority for c in p.chunks] == [(3, 0), (3, 1), (3, 2), (3, 3), (1, 0)]
    assert p.update_s == pytest.approx([0, (1 << 20) / 1e9, 0, (4 << 20) / 1e9])
    assert p.compute_s == pytest.approx(22.1e-3 + (5 << 20) / 1e9)
    faster = make_plan(profile_dict(), fabric('ib-edr'), 4, fusion_bytes=0, chunk_bytes=1 << 20,
                       update_rate=1e9, compute_speedup=2)
    assert faster.compute_s == pytest.approx(p.compute_s / 2)
    assert faster.chunk_busy_s == p.chunk_busy_s


def test_plan_buckets_are_the_communicators():
    """The same slices a real net's arena gives the communicator (LeNet, fused)."""
    from layerasync import models
    from layerasync.data import DataOptions
    from layerasync.net import Net, load_net_param
    net = Net(load_net_param(models.path('lenet', 'net')), 'TRAIN',
              data=DataOptions(synthetic=True))
    profile = {'layers': [dict(forward_ms=1, backward_ms=1,
                               param_bytes=sum(b.data.nbytes for b in layer.blobs))
                          for layer in net.layers]}
    settings = dict(fusion_bytes=64 << 10, chunk_bytes=256 << 10)
    real, _ = make_buckets(list(net.arena.segments.items()), **settings)
    modelled = make_plan(profile, fabric('shm'), 2, update_rate=1e9, **settings).buckets
    assert real == modelled


def test_defaults_are_the_trainers(tmp_path):
    from layerasync.comm import scheduler_name
    """make_plan and the command default to layerasync.comm.DEFAULTS, not to their own."""
    profile = profile_dict()
    settings = dict(fusion_bytes=DEFAULTS['fusion_bytes'], chunk_bytes=DEFAULTS['chunk_bytes'],
                    in_flight=DEFAULTS['max_in_flight'],
                    scheduler=scheduler_name(DEFAULTS['priority']))
    assert make_plan(profile, fabric('shm'), 2, update_rate=1e9) == \
        make_plan(profile, fabric('shm'), 2, update_rate=1e9, **settings)
    top = argparse.ArgumentParser()
    add_commands(top.add_subparsers(dest='command'))
    args = top.parse_args(['sim', '--profile', 'p.json'])
    assert dict(fusion_bytes=args.fusion_bytes, chunk_bytes=args.chunk_bytes,
                in_flight=args.in_flight, scheduler=args.scheduler) == settings


def test_simulate_trends():
    profile = profile_dict()
    ranks = [1, 2, 4, 16, 64, 256]
    rows = simulate(profile, fabric('10gbe'), ranks, ['sync', 'layerwise', 'delayed:1'],
                    update_rate=2e9)
    by = {(r.ranks, r.strategy): r for r in rows}
    one = by[1, 'sync']
    assert one.comm_ms == 0 and one.exposed_ms == 0 and math.isnan(one.overlap)
    assert one.speedup == pytest.approx(1) and one.efficiency == pytest.approx(1)
    for strategy in ('sync', 'layerwise', 'delayed:1'):
        mine = [by[p, strategy] for p in ranks]
        assert all(a.speedup < b.speedup for a, b in zip(mine, mine[1:]))
        assert all(a.efficiency >= b.efficiency - 1e-12 for a, b in zip(mine, mine[1:]))
    for p in ranks[1:]:
        assert by[p, 'sync'].overlap == pytest.approx(0)
        assert by[p, 'sync'].iteration_ms >= by[p, 'layerwise'].iteration_ms >= \
            by[p, 'delayed:1'].iteration_ms
    faster = simulate(profile, fabric('ib-edr'), [64], ['sync'], update_rate=2e9)[0]
    assert faster.iteration_ms < by[64, 'sync'].iteration_ms


def test_cli_table_and_csv(tmp_path, capsys):
    path = tmp_path / 'tiny.json'
    path.write_text(json.dumps(profile_dict()))
    top = argparse.ArgumentParser()
    add_commands(top.add_subparsers(dest='command'))
    out = tmp_path / 'sim.csv'
    args = top.parse_args(['sim', '--profile', str(path), '--ranks', '1,2,4', '--fabric', '1gbe',
                           '--strategy', 'sync,async-layerwise', '--update-rate', '2GB/s',
                           '--csv', str(out)])
    args.run(args)
    printed = capsys.readouterr().out
    assert '1gbe' in printed and 'async-layerwise' in printed
    rows = list(csv.DictReader(out.open()))
    assert [(r['ranks'], r['strategy']) for r in rows] == [
        (p, s) for p in ('1', '2', '4') for s in ('sync', 'async-layerwise')]
    assert rows[0]['overlap'] == '' and float(rows[2]['comm_ms']) > 0


def test_cli_reads_a_sweep_with_its_hook_overhead(tmp_path, capsys):
    truth = Network(alpha=5e-6, beta=2e9)
    sizes = [4096, 65536, 1 << 20]
    sweep = {'ranks': 2, 'sizes': sizes, 'hook_overhead_s': 50e-6,
             'iallreduce_s': [truth.allreduce_time(n, 2) for n in sizes]}
    (tmp_path / 'sweep.json').write_text(json.dumps(sweep))
    (tmp_path / 'tiny.json').write_text(json.dumps(profile_dict()))
    top = argparse.ArgumentParser()
    add_commands(top.add_subparsers(dest='command'))
    args = top.parse_args(['sim', '--profile', str(tmp_path / 'tiny.json'), '--ranks', '2',
                           '--network', str(tmp_path / 'sweep.json'), '--update-rate', '2GB/s',
                           '--bandwidth', '8gbit'])
    args.run(args)
    printed = capsys.readouterr().out
    # --bandwidth overrides the fitted 2 GB/s; the fitted latency stays.
    assert 'latency 5 us, bandwidth 1 GB/s (8 Gbit/s)' in printed
    assert '50 us per layer hook' in printed and 'update 2 GB/s' in printed


def test_cli_refuses_an_ambiguous_rate(capsys):
    top = argparse.ArgumentParser()
    add_commands(top.add_subparsers(dest='command'))
    with pytest.raises(SystemExit):
        top.parse_args(['sim', '--profile', 'p.json', '--bandwidth', '10gbps'])
    assert "--bandwidth '10gbps' is ambiguous" in capsys.readouterr().err


def test_load_profile_says_what_is_wrong(tmp_path):
    path = tmp_path / 'sweep.json'
    path.write_text(json.dumps({'ranks': 2, 'sizes': [1]}))
    with pytest.raises(ValueError, match='layerasync time'):
        load_profile(path)


def test_auto_scheduler_follows_the_modelled_link():
    """'auto' is priority exactly where the allreduce of all gradients reaches the threshold."""
    from layerasync.comm import PRIORITY_ABOVE, choose_priority
    profile = profile_dict()
    seen = set()
    for network in [fabric(name) for name in ('shm', '1gbe', '10gbe')] + [
            fabric('1gbe').with_(beta=fabric('1gbe').beta / 8)]:   # 125 Mbit/s
        total = sum(layer['param_bytes'] for layer in profile['layers'])
        expected = network.allreduce_time(total, 2) >= PRIORITY_ABOVE
        assert make_plan(profile, network, 2, update_rate=1e9, scheduler='auto').priority == expected
        seen.add(expected)
    assert seen == {False, True}
    assert choose_priority('auto', PRIORITY_ABOVE) and not choose_priority('auto', 0.0)
    assert choose_priority(True, 0.0) and not choose_priority(False, 1e9)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        choose_priority('yes', 1.0)


@pytest.mark.parametrize('spec', ['bf16', 'fp16', 'topk:0.01', 'powersgd:4'])
def test_codec_rates_are_measured(spec):
    from layerasync.sim.calibrate import measure_codec_rate
    rate = measure_codec_rate(spec, nbytes=256 << 10, repeats=2)
    assert 1e6 < rate < math.inf
