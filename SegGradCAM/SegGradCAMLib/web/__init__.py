"""The browser viewer (``seggradcam web``, the ``[web]`` extra): :mod:`.app` is the trame-slicer
application, :mod:`.uploads` stores what the browser sends, :mod:`.access` lets only the server's
own page connect, :mod:`.controls` checks what the page sends, :mod:`.case` is what is shown."""
