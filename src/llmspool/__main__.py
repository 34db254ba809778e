from llmspool.control.cli import main

main()
