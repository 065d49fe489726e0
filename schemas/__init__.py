"""Plain data shared by every part of the relay; imports nothing else of ours."""
