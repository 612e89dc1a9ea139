"""``python -m threadko``: the ``threadko`` command line."""

from threadko.cli.main import main

if __name__ == '__main__':
    main(prog_name='threadko')
