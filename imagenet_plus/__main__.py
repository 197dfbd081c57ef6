"""``python -m imagenet_plus`` (also what ``accelerate launch -m imagenet_plus`` runs)."""

from imagenet_plus.cli import main

if __name__ == "__main__":
    main()
