"""Documents in: reading a corpus folder or an upload (`corpus`, `uploads`, `pdf`),
cleaning (`clean`), exact-offset chunks (`chunk`), and embedding them into a new build of
the store (`build`), or copying a local build into Milvus (`migrate`)."""
