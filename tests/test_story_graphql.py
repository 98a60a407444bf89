"""The story graph over GraphQL, executed without HTTP; mutations publish events."""

from __future__ import annotations

from pathlib import Path

from gibsey.node.story.graphql import execute, schema
from tests.story_support import FOX, make_story


def test_queries_and_mutations(tmp_path: Path) -> None:
    story = make_story(tmp_path)
    published: list[tuple[object, ...]] = []
    try:
        r = execute(
            story,
            'mutation { createBranch(name: "fox", actor: "london-fox") { commit } }',
            publish=lambda *a: published.append(a),
        )
        assert r.errors is None
        r = execute(
            story,
            'mutation W($t: String!) { writePage(branch: "fox", page: "004", text: $t, '
            'actor: "london-fox") { commit entry } }',
            {"t": "She counted the exits three times.\n"},
            publish=lambda *a: published.append(a),
        )
        assert r.errors is None and r.data is not None
        assert [p[0] for p in published] == ["branch", "write"]
        q = """
        {
          branches { name canon head }
          branch(name: "fox") {
            history(limit: 5) { author message }
            pages(symbol: "london-fox") { id title }
          }
          page(id: "004", ref: "fox") { text symbol version }
          actors { name commits }
          edges(kind: "ALTERNATE_OF") { src dst }
          diff(a: "main", b: "fox") { page wordsAdded hunks { tag old new } }
          mergePreview(source: "fox") { pagesChanged conflicts { page } }
          hearings { status }
        }
        """
        r = execute(story, q)
        assert r.errors is None and r.data is not None
        d = r.data
        assert {b["name"] for b in d["branches"]} == {"main", "fox"}
        assert d["branch"]["history"][0] == {"author": "london-fox", "message": f"write {FOX}"}
        assert [p["id"] for p in d["branch"]["pages"]] == ["004", "005", "006"]
        assert d["page"]["text"] == "She counted the exits three times.\n"
        assert {"name": "london-fox", "commits": 1} in d["actors"]
        assert {"src": "branch:fox", "dst": "branch:main"} in d["edges"]
        assert d["diff"][0]["page"] == FOX and d["diff"][0]["wordsAdded"] > 0
        assert d["mergePreview"] == {"pagesChanged": [FOX], "conflicts": []}
        r = execute(
            story,
            'mutation { writePage(branch: "fox", page: "nope", text: "x", actor: "london-fox") '
            "{ commit } }",
        )
        assert r.errors is not None and "no page 'nope' on fox" in r.errors[0].message
        assert "type Query" in str(schema)
    finally:
        story.close_all()


def test_a_page_number_names_the_same_page_as_on_the_command_line(tmp_path: Path) -> None:
    """Tried (an outside tester): GraphQL's page(id: "3") found nothing where `gibsey story show
    main 3` shows page 003, and writePage(page: "3", title, symbol) made a second page "3"
    beside 003 (711 pages; what "3" names then depended on the branch). Must hold: "4" names
    page 004 when there is no page "4", for reading and writing, and no page is added."""
    story = make_story(tmp_path)
    try:
        r = execute(story, '{ page(id: "4") { id symbol } }')
        assert r.errors is None and r.data == {"page": {"id": FOX, "symbol": "london-fox"}}
        execute(story, 'mutation { createBranch(name: "fox", actor: "london-fox") { commit } }')
        before = len(story.graph.tree(story.head("fox")))
        r = execute(
            story,
            'mutation { writePage(branch: "fox", page: "4", text: "Counted once.\\n", '
            'actor: "london-fox", title: "A title", symbol: "london-fox") { commit } }',
        )
        assert r.errors is None, r.errors
        tree = story.graph.tree(story.head("fox"))
        assert len(tree) == before and "4" not in tree
        assert story.page("fox", FOX)[1].text == "Counted once.\n"
    finally:
        story.close_all()
