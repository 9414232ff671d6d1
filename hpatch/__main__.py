"""``python -m hpatch``."""

from hpatch.cli import main

if __name__ == "__main__":
    main()
