"""One module per stage. Stage logic is plain Python (usable in-process, in batch jobs and
in tests); the Serve deployments wrap these classes and add no logic of their own."""
