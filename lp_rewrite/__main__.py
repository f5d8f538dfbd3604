from lp_rewrite.cli import main

main()
