"""Repository tooling, not part of the installed library: run from the checkout.

    python -m bench.benchmark --help     graph vs dense: training, decoding, attention, ceiling, profile
    python -m bench.ablation --help      the aggregator x structure grid through the normal Trainer
    python -m bench.compile_check --help torch.compile vs eager on the training step (prints a table)

Both read configs/ and write relative to the current directory: scratch outputs under
runs/ by default, docs/ only when named with --out, and never over an earlier run's files
without --force. :mod:`bench.flops` and :mod:`bench.profiling` are what the numbers rest on.
"""
