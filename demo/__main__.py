"""`python -m demo` runs the end-to-end demo (`demo.run.main`)."""

from demo.run import main

main()
