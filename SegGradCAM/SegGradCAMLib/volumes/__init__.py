"""Volumes on disk: reading and writing with their geometry (:mod:`.files`), what a file's header
declares checked before it is read (:mod:`.declared`), and the three-plane overview figure
(:mod:`.overview`)."""
