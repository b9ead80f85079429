// Projects and spec tasks: fork a sample project, list the tasks, start one (the new session shows
// up on the Sessions page through the event stream, no reload).

import { useEffect, useState } from "preact/hooks";
import { describeFailure, getJson, type ProjectView, sendJson, type TaskView } from "../api.ts";
import { Badge, type Message, Notice } from "../ui.tsx";

interface SampleProject {
  id: string;
  name: string;
  description: string;
  task_count: number;
}

const STARTABLE = new Set(["backlog", "planning"]);

export function Projects() {
  const [samples, setSamples] = useState<SampleProject[]>([]);
  const [projects, setProjects] = useState<ProjectView[]>([]);
  const [tasks, setTasks] = useState<TaskView[]>([]);
  const [message, setMessage] = useState<Message | null>(null);
  const [started, setStarted] = useState<{ task: string; session: string } | null>(null);

  const load = async () => {
    try {
      const [s, p, t] = await Promise.all([
        getJson<SampleProject[]>("/api/v1/sample-projects"),
        getJson<ProjectView[]>("/api/v1/projects"),
        getJson<TaskView[]>("/api/v1/spec-tasks"),
      ]);
      setSamples(s);
      setProjects(p);
      setTasks(t);
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };
  useEffect(() => void load(), []);

  const fork = async (sample: SampleProject) => {
    try {
      const answer = await sendJson<{ message: string }>("POST", "/api/v1/sample-projects/simple/fork", {
        sample_project_id: sample.id,
      });
      setMessage({ tone: "ok", text: answer.message });
      await load();
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };

  const start = async (task: TaskView) => {
    setMessage({ tone: "info", text: `Starting ${task.name}…` });
    try {
      const answer = await sendJson<{ session_id: string }>(
        "POST",
        `/api/v1/spec-tasks/${encodeURIComponent(task.id)}/start-planning`,
      );
      setStarted({ task: task.name, session: answer.session_id });
      setMessage(null);
      await load();
    } catch (err) {
      setMessage({ tone: "error", text: describeFailure(err) });
    }
  };

  return (
    <main>
      <h1>Projects</h1>
      <Notice message={message} />
      {started ? (
        <p class="notice notice-ok" role="status">
          Started {started.task}: <a href={`/ui/sessions/${started.session}`}>session {started.session}</a> ·{" "}
          <a href="/ui/">all sessions</a>
        </p>
      ) : null}
      <section aria-labelledby="samples-title">
        <h2 id="samples-title">Sample projects</h2>
        <ul class="list">
          {samples.map((s) => (
            <li key={s.id}>
              <div>
                <strong>{s.name}</strong> <span class="meta">{s.task_count} tasks</span>
                <p class="meta">{s.description}</p>
              </div>
              <button type="button" onClick={() => fork(s)} aria-label={`Fork ${s.name}`}>
                Fork
              </button>
            </li>
          ))}
        </ul>
      </section>
      {projects.length === 0 ? <p class="empty">No projects yet: fork a sample project.</p> : null}
      {projects.map((p) => (
        <section key={p.id} aria-label={`Project ${p.name}`} class="project">
          <h2>{p.name}</h2>
          <ul class="list">
            {tasks
              .filter((t) => t.project_id === p.id)
              .map((t) => (
                <li key={t.id} data-task-id={t.id}>
                  <div>
                    <strong>{t.name}</strong> <Badge value={t.status} />{" "}
                    <span class="meta">{t.priority}</span>
                  </div>
                  <button
                    type="button"
                    disabled={!STARTABLE.has(t.status)}
                    onClick={() => start(t)}
                    aria-label={`Start ${t.name}`}
                  >
                    Start
                  </button>
                </li>
              ))}
          </ul>
        </section>
      ))}
    </main>
  );
}
