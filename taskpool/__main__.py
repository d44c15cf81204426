"""``python -m taskpool``: the same as the ``taskpool`` command."""

from taskpool.cli import main

if __name__ == "__main__":
    main()
