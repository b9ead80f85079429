// `revdial project fork TEMPLATE --name N`, `revdial project list`, `revdial project samples`.

import type { Command } from "commander";
import type { projectView, specTaskView } from "../../api/routes/route-views.ts";
import { createApiClient } from "../api-client.ts";
import { type Column, formatJson, formatTable, print, printList } from "../output.ts";

type ProjectView = ReturnType<typeof projectView>;
type SpecTaskView = ReturnType<typeof specTaskView>;

interface ForkAnswer {
  project_id: string;
  tasks_created: number;
  message: string;
  tasks?: SpecTaskView[];
}

interface SampleProject {
  id: string;
  name: string;
  description: string;
  task_count: number;
}

export const TASK_COLUMNS: readonly Column<SpecTaskView>[] = Object.freeze([
  { header: "id", value: (t: SpecTaskView) => t.id },
  { header: "name", value: (t: SpecTaskView) => t.name },
  { header: "status", value: (t: SpecTaskView) => t.status },
  { header: "priority", value: (t: SpecTaskView) => t.priority },
]);

const PROJECT_COLUMNS: readonly Column<ProjectView>[] = [
  { header: "id", value: (p) => p.id },
  { header: "name", value: (p) => p.name },
  { header: "sample", value: (p) => p.sample_project_id },
  { header: "created", value: (p) => p.created_at },
];

const SAMPLE_COLUMNS: readonly Column<SampleProject>[] = [
  { header: "id", value: (s) => s.id },
  { header: "name", value: (s) => s.name },
  { header: "tasks", value: (s) => s.task_count },
  { header: "description", value: (s) => s.description },
];

async function fork(template: string, flags: { name?: string; description?: string; json?: boolean }) {
  const answer = await createApiClient().post<ForkAnswer>("/api/v1/sample-projects/simple/fork", {
    sample_project_id: template,
    project_name: flags.name,
    description: flags.description,
  });
  if (flags.json) return print(formatJson(answer));
  print(`Project created: ${answer.project_id}\n`);
  print(`Tasks created: ${answer.tasks_created}\n`);
  if (answer.tasks?.length) print(formatTable(answer.tasks, TASK_COLUMNS));
}

export function register(program: Command): void {
  const project = program.command("project").description("projects and sample projects");

  project
    .command("fork")
    .description("create a project from a sample project, with its spec tasks")
    .argument("<sample>", "sample project id, e.g. modern-todo-app")
    .option("--name <name>", "name of the new project")
    .option("--description <text>", "description of the new project")
    .option("--json", "print JSON")
    .action(fork);

  project
    .command("list")
    .description("list your projects")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      printList(await createApiClient().get<ProjectView[]>("/api/v1/projects"), PROJECT_COLUMNS, flags.json);
    });

  project
    .command("samples")
    .description("list the sample projects you can fork")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      printList(
        await createApiClient().get<SampleProject[]>("/api/v1/sample-projects"),
        SAMPLE_COLUMNS,
        flags.json,
      );
    });
}
