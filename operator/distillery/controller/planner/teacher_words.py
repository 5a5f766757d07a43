"""How status words the teacher stage: a single teacher by its model, several by their names. The teacher
stage takes one path for both (teachers.py); only its words differ, and they differ here alone."""

from dataclasses import dataclass

from distillery.api.spec import DistillationSpec, NamedTeacherSpec
from distillery.controller.observe import DeploymentView


@dataclass(frozen=True)
class OneTeacher:
    members: list[NamedTeacherSpec]
    who: str = "teacher"
    whose: str = "its"

    def endpoints(self) -> tuple[str, str]:
        """(the skipped stage's message, TeacherReady's) when the teacher is an external endpoint."""
        endpoint = self.members[0].endpoint
        assert endpoint is not None
        return f"external endpoint {endpoint.url}", f"using {endpoint.url}"

    def starting(self, served: list[int]) -> str:
        return "starting the teacher server"

    def serving(self, served: list[int], views: dict[int, DeploymentView | None]) -> tuple[str, str]:
        """(TeacherReady's message, the Event's) once the teacher is available."""
        view, model = views[served[0]], self.members[served[0]].model
        assert view is not None
        return f"{view.available_replicas} replica(s) serving {model}", f"Teacher {model} is serving"

    def not_serving(self, waiting: list[int]) -> str:
        return f"teacher {self.members[waiting[0]].model} is not serving yet"

    def kept(self, held: list[int]) -> str:
        return f"serving {self.members[held[0]].model}"


@dataclass(frozen=True)
class SeveralTeachers(OneTeacher):
    who: str = "teachers"
    whose: str = "their"

    def endpoints(self) -> tuple[str, str]:
        return "every teacher is an external endpoint", "every teacher is an external endpoint"

    def starting(self, served: list[int]) -> str:
        return f"starting {len(served)} teacher servers"

    def serving(self, served: list[int], views: dict[int, DeploymentView | None]) -> tuple[str, str]:
        serving = ", ".join(f"{self.members[i].name} ({self.members[i].model})" for i in served)
        return f"teachers serving: {serving}", f"Teachers are serving: {serving}"

    def not_serving(self, waiting: list[int]) -> str:
        return f"teacher(s) {', '.join(self.members[i].name for i in waiting)} not serving yet"

    def kept(self, held: list[int]) -> str:
        return "teachers serving: " + ", ".join(self.members[i].name for i in held)


def teacher_words(spec: DistillationSpec) -> OneTeacher:
    members = spec.teacher_list()
    return SeveralTeachers(members) if spec.several_teachers else OneTeacher(members)
