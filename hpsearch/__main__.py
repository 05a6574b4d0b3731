from hpsearch.cli import app

app()
