"""``python -m dynogen``: the same CLI as the ``dynogen`` script."""

from dynogen.cli.main import main

main()
