"""``python -m export RUN_DIR [...]`` from a checkout: the same as ``ffsd-export`` / ``python -m ffsd_tf.export``."""

from ffsd_tf.export.__main__ import console_main

if __name__ == "__main__":
    console_main()
