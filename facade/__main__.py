"""`python -m facade`: see facade.main."""

from facade.main import main

main()
