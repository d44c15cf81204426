"""``python -m tasks``: the same as the ``taskpool`` command."""

from tasks.cli import main

if __name__ == "__main__":
    main()
