from llmspool.control.cli import main

# Guarded: engines that start helper processes with multiprocessing's "spawn" (vLLM) import
# the main module again in the child, which must not start the command line a second time.
if __name__ == "__main__":
    main()
