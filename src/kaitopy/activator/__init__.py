"""The activator: a proxy in front of InferenceSets that may scale to zero. It holds requests while a
set has no ready member, wakes the set (0 -> 1 through the scale subresource), and forwards."""
