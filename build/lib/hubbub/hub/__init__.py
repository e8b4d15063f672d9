"""The hub: messages, subscriptions, and the backends that carry them."""
