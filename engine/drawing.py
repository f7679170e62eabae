"""A compiled graph drawn: ``app.get_graph().draw_mermaid()``.

The Mermaid text follows LangGraph's layout, so a drawing made under
``engine.langgraph`` is the one LangGraph makes for the same graph: START and
END as rounded terminals, nodes in the order they were added, static edges
solid and conditional edges dotted (labelled with the router's return value
where it differs from the target), edges sorted by source and target with
the static edges into END last. A fan-in edge is drawn as one edge from each
of its sources. A conditional edge without a path map is drawn to every node
it could reach (any node, or END). The destinations a node's
``Command(goto=...)`` may take (``add_node(..., destinations=...)``, or its
``-> Command[Literal[...]]`` annotation) are drawn as conditional edges,
labelled where given a label; a node with no edge out is drawn into END.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Plan
from .spec import END, START

_HEAD = """---
config:
  flowchart:
    curve: linear
---
graph TD;
"""
_TAIL = """\tclassDef default fill:#f2f0ff,line-height:1.2
\tclassDef first fill-opacity:0
\tclassDef last fill:#bfb6fc
"""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    conditional: bool = False
    label: str | None = None


@dataclass(frozen=True)
class Drawing:
    """The nodes and edges of a compiled graph, as drawn."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]

    @classmethod
    def of(cls, plan: Plan) -> Drawing:
        edges: list[Edge] = []
        for source, targets in plan.edges.items():
            edges += [Edge(source, t) for t in targets]
        for fan in plan.fanins:
            edges += [Edge(s, fan.target) for s in sorted(fan.sources)]
        for source, branches in plan.branches.items():
            for branch in branches:
                if branch.path_map is None:
                    everything = [n for n in plan.nodes if n != source] + [END]
                    edges += [Edge(source, t, True) for t in everything]
                    continue
                for key, target in branch.path_map.items():
                    label = None if str(key) == target else str(key)
                    edges.append(Edge(source, target, True, label))
        for name, node in plan.nodes.items():
            for target, label in (node.spec.destinations or {}).items():
                edges.append(Edge(name, target, True, label))
        leaving = {e.source for e in edges}
        # A node with no way on ends the run: drawn with an edge to END.
        edges += [Edge(n, END) for n in plan.nodes if n not in leaving]
        unique = list(dict.fromkeys(edges))
        return cls(nodes=tuple(plan.nodes), edges=tuple(unique))

    def draw_mermaid(self) -> str:
        """The graph as Mermaid flowchart text."""
        lines = [_HEAD, f"\t{START}([<p>{START}</p>]):::first\n"]
        lines += [f"\t{n}({n})\n" for n in self.nodes]
        if any(e.target == END for e in self.edges):
            lines.append(f"\t{END}([<p>{END}</p>]):::last\n")
        last = [e for e in self.edges if e.target == END and not e.conditional]
        rest = sorted((e for e in self.edges if e not in last), key=lambda e: (e.source, e.target))
        for e in rest + sorted(last, key=lambda e: e.source):
            if not e.conditional:
                lines.append(f"\t{e.source} --> {e.target};\n")
            elif e.label is None:
                lines.append(f"\t{e.source} -.-> {e.target};\n")
            else:
                lines.append(f"\t{e.source} -. &nbsp;{e.label}&nbsp; .-> {e.target};\n")
        lines.append(_TAIL)
        return "".join(lines)


__all__ = ["Drawing", "Edge"]
