"""`python -m diffgap_search.cli`: the same as the `diffgap-search` command."""

from diffgap_search.cli import app

app(prog_name="diffgap-search")
