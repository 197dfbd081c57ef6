"""Running stages: config loading (``config``), process ranks and their rendezvous (``ranks``), progress
bars (``progress``), and ``imagenet-plus run`` (``runner``)."""
