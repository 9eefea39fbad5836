"""Entry point of fence_xvm (multicast client)."""

from guestfence.agents.virtclient import main_for


def main() -> None:
    main_for("fence_xvm")


if __name__ == "__main__":
    main()
