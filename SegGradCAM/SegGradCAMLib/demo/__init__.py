"""The demo multi-class model: its data recipe (real MRI heads with synthetic lesions,
:mod:`.data`) and its training (:mod:`.training`)."""
