"""``python -m csa`` (and ``torchrun -m csa train ...``) run the command line."""
from .cli import main

main()
