"""Entry point of fence_virt (serial, VM-channel, TCP and vsock client)."""

from guestfence.agents.virtclient import main_for


def main() -> None:
    main_for("fence_virt")


if __name__ == "__main__":
    main()
