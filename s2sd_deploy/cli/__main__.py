"""``python -m s2sd_deploy.cli``: the same as ``s2sd`` (torchrun needs a module or a script)."""

from . import main

main()
