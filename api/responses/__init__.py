"""OpenAI's Responses API, the part that file_search needs (the route: api.routes.responses).

- `request`: what a request may ask, what is accepted as a hint and what is refused (400);
- `search`: the file_search tool over vector stores (collections), merged best first;
- `citations`: [n] markers in an answer -> `file_citation` annotations at their sentences;
- `events`: the Response object and its stream of events, one generator for both;
- `store`: stored responses, one JSON file each under `<index_dir>/responses/`.
"""
