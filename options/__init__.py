"""What the user hands the program, read strictly: the command line's pieces and what checks it.

``parsing`` (value types and the parser whose errors are one line), ``domains`` (the domain of every numeric
option and the checks between options), ``presets`` (the named sets of defaults), ``registry`` (name ->
plug-in tables whose names are known without importing the plug-ins, so ``--help`` stays instant) and
``safe_io`` (the one reader of user-supplied JSON, and the net that makes every failure one line). The
option table itself is ``config.py`` at the top: the design card's file. Nothing here imports torch.
"""
