from ipsx.cli import main

main()
