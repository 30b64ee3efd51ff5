"""``python -m service.cli``: the ``camdrift`` command line."""

from service.cli import app

app()
