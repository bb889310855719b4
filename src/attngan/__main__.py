"""``python -m attngan ...`` (also ``torchrun -m attngan train ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
