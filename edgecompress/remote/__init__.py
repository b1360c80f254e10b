"""Remote benchmarking: run the measurement on the target board over ssh, numbers come back.

``ssh`` holds the transport (OpenSSH client, verified host keys, quoted commands, tar streams),
``agent`` is what runs on the board (``python -m edgecompress.remote.agent``), ``bench`` ties them
into the bench stage. Nothing here is imported by ``import edgecompress``.
"""
