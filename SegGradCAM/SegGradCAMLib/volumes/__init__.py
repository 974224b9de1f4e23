"""Volumes on disk: reading and writing with their geometry (:mod:`.files`) and the
three-plane overview figure (:mod:`.overview`)."""
