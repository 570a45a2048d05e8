"""`cocker demo`: the main workflow on a built-in busybox image, run through the real CLI.

tour.run_demo is the one entry point; sshd.py and servers.py hold the throwaway servers it
starts on loopback, narration.py how each step is run and shown.
"""
