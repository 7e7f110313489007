"""The command line: one module per command, installed as console scripts (pyproject.toml).

    tg-train           cli/train.py       train from a YAML config, or resume a run
    tg-evaluate        cli/evaluate.py    metrics of a checkpoint on a split or on text files
    tg-translate       cli/translate.py   raw sentences in, translations out
    tg-visualize       cli/visualize.py   attention pictures and animations
    tg-plot-act        cli/plot_act.py    ACT step pictures of a Universal Transformer
    tg-fetch-multi30k  cli/fetch.py       download and verify Multi30k

Each module has ``main(argv) -> exit code`` (the console script; also
``python -m transformer_graph.cli.<module>``); those that produce a result also have
``run(argv)`` returning it, for in-process callers. User errors go through
:mod:`transformer_graph.cli.errors`: one ``error: ...`` line, exit code 2.
"""
