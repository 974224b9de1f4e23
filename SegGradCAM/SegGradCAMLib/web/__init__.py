"""The browser viewer (``seggradcam web``, the ``[web]`` extra): :mod:`.app` is the trame-slicer
application, :mod:`.uploads` stores what the browser sends."""
