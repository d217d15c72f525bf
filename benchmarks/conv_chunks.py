"""Convolution chunk sizes, side by side in one process: whole forward-backward
passes of a zoo net with each (col budget, minimum columns) setting, the
settings alternating in rounds so machine drift hits them all alike.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/conv_chunks.py --model resnet20 --iterations 1

``layerasync/layers/vision.py`` picks its default by the BLAS thread count;
this is the measurement behind that choice (docs/performance.md).
"""
import argparse
import statistics
import time

SETTINGS = {'64k': (1 << 16, 512), '256k': (1 << 18, 2048), '1M': (1 << 20, 4096)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='lenet')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--iterations', type=int, default=5, help='passes per setting per round')
    p.add_argument('--rounds', type=int, default=6)
    args = p.parse_args()
    import layerasync.layers.vision as vision
    from layerasync._threads import blas_threads
    from layerasync.bench import make_solver
    from layerasync.timing import fill_inputs

    net = make_solver(args.model, args.batch, 0, 1, prefetch=False).net
    fill_inputs(net)
    convolutions = [i for i, layer in enumerate(net.layers) if layer.type == 'Convolution']

    def use(setting):
        vision.COL_BUDGET, vision.MIN_COLUMNS = SETTINGS[setting]
        for i in convolutions:
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])

    seconds = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            use(setting)
            net.forward()
            net.backward()      # warm the workspaces of this setting
            start = time.perf_counter()
            for _ in range(args.iterations):
                net.forward()
                net.backward()
            seconds[setting].append((time.perf_counter() - start) / args.iterations)
    print(f'{args.model}, batch {args.batch}, {blas_threads()} BLAS thread(s): '
          f'forward-backward ms, median [min] of {args.rounds} rounds')
    for setting, values in seconds.items():
        print(f'  col budget {setting:>4}: {1e3 * statistics.median(values):7.1f} '
              f'[{1e3 * min(values):.1f}]')


if __name__ == '__main__':
    main()
