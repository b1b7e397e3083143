using System.Reflection;
using MountQcow.FileTree;

namespace MountQcow.Tests;

/// <summary>One server per mount: the static fields of a backend's assembly that could hold a tree, a file of one, a mount or a server.</summary>
public static class BackendStatics
{
    private static readonly Type[] s_held = [typeof(VirtualFileTree), typeof(IMount), typeof(VirtualFile), typeof(ITreeFile)];

    private static bool Holds(Type t) => s_held.Any(h => h.IsAssignableFrom(t)) || t.Name.Contains("Server") || t.Name.Contains("Mount");

    /// <summary>"Type.field" for each static field of <paramref name="backend"/> whose type (or a type argument of it) is one of those.</summary>
    public static List<string> Offenders(Assembly backend) =>
        backend.GetTypes()
            .SelectMany(t => t.GetFields(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Where(f => !f.IsLiteral && (Holds(f.FieldType) || (f.FieldType.IsGenericType && f.FieldType.GetGenericArguments().Any(Holds))))
            .Select(f => $"{f.DeclaringType!.FullName}.{f.Name}")
            .ToList();
}
