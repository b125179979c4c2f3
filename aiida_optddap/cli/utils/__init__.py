"""What the ``aiida-optddap`` commands share (as aiida-quantumespresso's ``cli/utils``): the click options
(:mod:`.options`), the parsing of their values (:mod:`.parse`), the nodes made from a file or an identifier
(:mod:`.nodes`), building and running a work chain (:mod:`.launch`) and the summary of a result
(:mod:`.display`)."""
