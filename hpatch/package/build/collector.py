"""The package builder's blockers, collected in one place as each stage finds them."""

from __future__ import annotations

from hpatch.blockers import Blocker, BlockerCause, BlockerKind, Build, function_label
from hpatch.image import PEImage


class BlockerCollector:
    """Every blocker a build finds, in the order found: stages report here and go on,
    so one build names every obstacle, not only the first."""

    def __init__(self, new: PEImage) -> None:
        self.new = new
        self.found: list[Blocker] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def add(
        self,
        kind: BlockerKind,
        cause: BlockerCause,
        where: str,
        reason: str,
        *,
        function: str | None = None,
        rva: int | None = None,
        end_rva: int | None = None,
        section: str | None = None,
        target_rva: int | None = None,
        build: Build | None = None,
    ) -> None:
        """A blocker; its places are in the new build unless ``build`` says otherwise."""
        self.found.append(
            Blocker(
                kind=kind,
                cause=cause,
                where=where,
                reason=reason,
                function=function,
                rva=rva,
                end_rva=end_rva,
                section=section,
                target_rva=target_rva,
                build=build if build is not None else Build.NEW if rva is not None else None,
            )
        )

    def reference(
        self,
        cause: BlockerCause,
        where: str,
        reason: str,
        *,
        site_rva: int,
        target_rva: int | None = None,
    ) -> None:
        """A field or branch of the carried code at ``site_rva`` that cannot be bound."""
        self.add(
            BlockerKind.UNRESOLVED_REFERENCE,
            cause,
            where,
            reason,
            function=self.function_of(site_rva),
            rva=site_rva,
            target_rva=target_rva,
        )

    def function_of(self, new_rva: int) -> str | None:
        """The label of the new build's function holding ``new_rva``, if one does."""
        function = self.new.function_at(new_rva)
        return function_label(function) if function is not None else None
