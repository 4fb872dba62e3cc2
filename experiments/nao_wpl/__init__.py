"""NAO vs NAO + WPL (``--mode=nao_wpl``): the WPL paper's NAO figure as a paired protocol at CPU scale.

protocol (sizes, units, option checks), run (one unit: one NAO search with or without WPL at one output
dropout and one seed), report (paired statistics, table, the figure), main (the mode), options (its
command-line options). docs/nao.md has the protocol, docs/results.md the results.
"""
