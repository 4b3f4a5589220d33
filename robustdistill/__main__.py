"""``python -m robustdistill`` (and ``torchrun -m robustdistill``)."""

from .cli import main

if __name__ == "__main__":
    main()
