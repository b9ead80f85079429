// The built-in sample projects a user can fork to get a project with ready spec tasks. Data only;
// the fork route turns a template into rows.

export interface SampleTask {
  readonly name: string;
  readonly description: string;
  readonly priority: "low" | "medium" | "high";
}

export interface SampleProject {
  readonly id: string;
  readonly name: string;
  readonly description: string;
  readonly tasks: readonly SampleTask[];
}

export const SAMPLE_PROJECTS: readonly SampleProject[] = Object.freeze([
  Object.freeze({
    id: "modern-todo-app",
    name: "Modern Todo App",
    description: "A React + TypeScript todo application with a small REST backend and a few known bugs.",
    tasks: Object.freeze([
      {
        name: "Fix delete bug",
        description:
          "Deleting a todo removes the wrong item when the list is filtered. Fix it and add a test.",
        priority: "high",
      },
      {
        name: "Add dark mode",
        description: "Add a dark theme that follows the system preference, with a toggle in the header.",
        priority: "medium",
      },
      {
        name: "Persist todos in local storage",
        description: "Keep the list across page reloads.",
        priority: "medium",
      },
      {
        name: "Add due dates",
        description: "Let a todo carry an optional due date and sort overdue items first.",
        priority: "low",
      },
    ] as const),
  }),
  Object.freeze({
    id: "api-service",
    name: "REST API Service",
    description: "A small Node.js REST service with authentication and a Postgres schema.",
    tasks: Object.freeze([
      {
        name: "Add rate limiting",
        description: "Limit each API key to a configurable number of requests per minute.",
        priority: "high",
      },
      {
        name: "Add pagination to list endpoints",
        description: "Cursor-based pagination on every list endpoint.",
        priority: "medium",
      },
    ] as const),
  }),
]);

export function findSampleProject(id: string): SampleProject | null {
  return SAMPLE_PROJECTS.find((p) => p.id === id) ?? null;
}
